//! What the agent has told the guard about itself, written only by the servers that face it
//! (the control socket and sd_notify), read by health, protection and EMF.

use std::time::{Duration, Instant, SystemTime};

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
    /// What made the agent ready (`start`, `notify`, `control`, `warm-up`, `health`).
    pub ready_source: Option<&'static str>,
}

impl AgentReport {
    /// Whether the agent missed its `--watchdog` deadline (or triggered it). `started` is when
    /// the running agent started (a new agent is given a full period); with no agent running
    /// (between an exit and a restart) nothing is missed.
    pub fn watchdog_missed(
        &self,
        period: Option<Duration>,
        started: Option<Instant>,
        agent_runs: bool,
        now: Instant,
    ) -> bool {
        let Some(period) = period else {
            return false;
        };
        if !agent_runs {
            return false;
        }
        let last = match (self.last_watchdog, started) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.watchdog_triggered
            || last.is_some_and(|last| now.saturating_duration_since(last) > period)
    }

    /// A new agent was started (`--restart`): what its predecessor reported does not carry over
    /// (a triggered watchdog, `STOPPING=1`, its work in flight).
    pub fn agent_restarted(&mut self) {
        self.stopping = false;
        self.watchdog_triggered = false;
        self.in_flight = None;
    }
}
