//! What health (and the `status` reply) reads: a `watch` of each snapshot, each written by its
//! one owner (the supervisor's phase, run and tick; the agent's reports; the IMDS poller; the
//! lifecycle work; the probes; the warm-pool hold; the load-balancer step). Reading never
//! blocks a writer for longer than a clone.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::aws::notices::ImdsStatus;
use crate::health::checks::Snapshot;
use crate::machine::announce::Announcer;
use crate::machine::state::Phase;
use crate::model::lifecycle::LifecycleStatus;
use crate::model::load_balancer::LoadBalancerStatus;
use crate::model::report::AgentReport;
use crate::model::run::RunStats;
use crate::process::cgroup::Tracking;

/// The readers' side of every snapshot. One per run, shared by the health threads and the
/// `status` reply.
#[derive(Clone)]
pub struct Views {
    pub name: String,
    pub watchdog: Option<Duration>,
    /// When the guard started.
    pub started: Instant,
    /// Where the health endpoint listens.
    pub health_addr: Option<SocketAddr>,
    pub phase: watch::Receiver<Phase>,
    pub run: watch::Receiver<RunStats>,
    /// The supervisor's (or, while the agent is held, the warm pool's) last wake-up.
    pub tick: watch::Receiver<Instant>,
    pub report: watch::Receiver<AgentReport>,
    pub imds: watch::Receiver<ImdsStatus>,
    pub checks: watch::Receiver<Snapshot>,
    pub lifecycle: watch::Receiver<LifecycleStatus>,
    /// Why the agent is held back, not started yet (`--in-warm-pool wait`); `None` otherwise.
    pub held: watch::Receiver<Option<String>>,
    /// This instance's target groups as last seen, and the last deregistration.
    pub load_balancer: watch::Receiver<LoadBalancerStatus>,
    /// For the count of the agent's subscribed connections.
    pub announcer: Announcer,
    /// What stands for the agent's processes (`--cgroup`): fixed for the run; a cgroup's
    /// figures are read when asked for.
    pub tracking: Tracking,
}

impl Views {
    /// Views of snapshots that never change, as a test wants them: `phase` and nothing else.
    #[cfg(test)]
    pub fn fixed(name: &str, phase: watch::Receiver<Phase>) -> Views {
        Views {
            name: name.to_string(),
            watchdog: None,
            started: Instant::now(),
            health_addr: None,
            phase,
            run: watch::channel(RunStats::default()).1,
            tick: watch::channel(Instant::now()).1,
            report: watch::channel(AgentReport::default()).1,
            imds: watch::channel(ImdsStatus::default()).1,
            checks: watch::channel(Snapshot::default()).1,
            lifecycle: watch::channel(LifecycleStatus::default()).1,
            held: watch::channel(None).1,
            load_balancer: watch::channel(LoadBalancerStatus::default()).1,
            announcer: Announcer::default(),
            tracking: Tracking::default(),
        }
    }

    /// Why the agent is held back, if it is.
    pub fn held(&self) -> Option<String> {
        self.held.borrow().clone()
    }

    /// The running (or last) agent's pid.
    pub fn agent_pid(&self) -> Option<i32> {
        self.run.borrow().agent_pid
    }

    /// How long the agent has run.
    pub fn agent_uptime(&self) -> Option<Duration> {
        self.run.borrow().agent_uptime()
    }

    /// How long ago the guard started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the agent is gone for good and the guard stays only to complete a lifecycle hook
    /// (the lifecycle work says what it waits for: the wait state, the other guards, or the
    /// instance's termination after a crash loop).
    pub fn stays_for_hook(&self) -> bool {
        self.phase.borrow().ended() && self.lifecycle.borrow().awaiting.is_some()
    }

    /// The supervisor's last wake-up (after the last agent, the composition root's, while the
    /// guard stays for a hook).
    pub fn last_tick(&self) -> Instant {
        *self.tick.borrow()
    }

    /// How many of the agent's connections are subscribed.
    pub fn subscribers(&self) -> usize {
        self.announcer.listeners()
    }

    /// Whether the agent missed its `--watchdog` deadline (or triggered it). Between an exit and
    /// a restart no agent runs to feed it: nothing is missed then.
    pub fn watchdog_missed(&self, now: Instant) -> bool {
        let between_runs = matches!(*self.phase.borrow(), Phase::Restarting(_));
        let started = self.run.borrow().agent_started;
        let report = self.report.borrow().clone();
        report.watchdog_missed(self.watchdog, started, !between_runs, now)
    }
}
