//! What the supervisor shares with the parts that face the agent and the operator (the control
//! socket, the sd_notify socket, later the health endpoint): announcements going out (phase
//! changes and drains), the agent's own reports coming in (status text, watchdog pings, work in
//! flight), and how many subscribers are listening.
//!
//! The phase itself stays the supervisor's: everyone else reads it through the `watch` here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, watch};

use crate::state::{DrainReason, Phase};

/// Something every subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// The phase changed to this (`starting|ready|draining|stopping|exited`).
    Phase(&'static str),
    /// A drain started (or its deadline moved).
    Drain(DrainInfo),
}

/// A drain as the agent hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainInfo {
    pub reason: DrainReason,
    /// Wall-clock deadline, for the RFC 3339 field.
    pub deadline: SystemTime,
    /// The same deadline on the monotonic clock, for `deadline_in_ms`.
    pub deadline_at: Instant,
}

/// What the agent has told the guard about itself.
#[derive(Debug, Clone, Default)]
pub struct AgentReport {
    /// The last sd_notify `STATUS=`.
    pub status: Option<String>,
    /// The agent said `STOPPING=1`.
    pub stopping: bool,
    /// The last `WATCHDOG=1`, or when the agent started.
    pub last_watchdog: Option<Instant>,
    /// `WATCHDOG=trigger`: the agent declared itself failed.
    pub watchdog_triggered: bool,
    /// Work in flight and when it was reported.
    pub in_flight: Option<(u64, SystemTime)>,
    /// The drain in progress, if any.
    pub drain: Option<DrainInfo>,
    /// What made the agent ready (`start`, `notify`, `control`, `warm-up`, `health`).
    pub ready_source: Option<&'static str>,
}

/// The shared hub. One per run, behind an `Arc`.
pub struct Hub {
    pub name: String,
    pub phase: watch::Receiver<Phase>,
    pub watchdog: Option<Duration>,
    announce: broadcast::Sender<Announcement>,
    subscribers: AtomicUsize,
    report: Mutex<AgentReport>,
    agent_pid: Mutex<Option<i32>>,
    started: Instant,
}

impl Hub {
    pub fn new(name: &str, phase: watch::Receiver<Phase>, watchdog: Option<Duration>) -> Self {
        // A subscriber that falls this far behind misses announcements; it is told so.
        let (announce, _) = broadcast::channel(64);
        Hub {
            name: name.to_string(),
            phase,
            watchdog,
            announce,
            subscribers: AtomicUsize::new(0),
            report: Mutex::new(AgentReport::default()),
            agent_pid: Mutex::new(None),
            started: Instant::now(),
        }
    }

    /// Sends `a` to every subscriber.
    pub fn announce(&self, a: Announcement) {
        if let Announcement::Drain(info) = &a {
            self.report().drain = Some(info.clone());
        }
        // No receiver is fine: nobody listens.
        let _ = self.announce.send(a);
    }

    /// A new subscription; counted until it is dropped.
    pub fn subscribe_owned(self: &Arc<Self>) -> OwnedSubscription {
        self.subscribers.fetch_add(1, Ordering::SeqCst);
        OwnedSubscription {
            hub: self.clone(),
            rx: self.announce.subscribe(),
        }
    }

    /// Whether anyone listens for drain announcements.
    pub fn has_subscribers(&self) -> bool {
        self.subscribers() > 0
    }

    /// How many connections are subscribed.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::SeqCst)
    }

    /// The agent's reports, to read or update.
    pub fn report(&self) -> MutexGuard<'_, AgentReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_agent_pid(&self, pid: i32) {
        *self.agent_pid.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
        self.report().last_watchdog = Some(Instant::now());
    }

    pub fn agent_pid(&self) -> Option<i32> {
        *self.agent_pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long ago the guard started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the agent missed its `--watchdog` deadline (or triggered it).
    pub fn watchdog_missed(&self, now: Instant) -> bool {
        let Some(period) = self.watchdog else {
            return false;
        };
        let report = self.report();
        report.watchdog_triggered
            || report
                .last_watchdog
                .is_some_and(|last| now.saturating_duration_since(last) > period)
    }
}

/// A live subscription; the count drops with it.
pub struct OwnedSubscription {
    hub: Arc<Hub>,
    pub rx: broadcast::Receiver<Announcement>,
}

impl Drop for OwnedSubscription {
    fn drop(&mut self) {
        self.hub.subscribers.fetch_sub(1, Ordering::SeqCst);
    }
}
