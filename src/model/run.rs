//! What the supervisor publishes of the run it owns (its statistics, for `/status` and
//! `/metrics` only: nothing decides on them), and the announcements every subscriber hears.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use crate::model::{DrainReason, PhaseName, RestartPolicy};

/// Something every subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// The phase changed to this.
    Phase(PhaseName),
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

/// The run as the supervisor, its one writer, publishes it (a `watch`).
#[derive(Debug, Clone)]
pub struct RunStats {
    /// When the phase last changed (by name).
    pub phase_since: SystemTime,
    /// Drains started, by reason: a metric, never a decision (the deciding reason is the
    /// supervisor's `Outcome::drain`).
    pub drains: BTreeMap<DrainReason, u64>,
    /// The agent's exit code (128+N for a signal), once it exited.
    pub agent_exit: Option<u8>,
    /// The running (or last) agent's pid, and when it started.
    pub agent_pid: Option<i32>,
    pub agent_started: Option<Instant>,
    /// The agent's cgroup directory, when it runs in one of its own (`--cgroup`): recorded in
    /// the hooks directory beside the pid, so that the other guards wait until it is empty.
    pub agent_cgroup: Option<PathBuf>,
    /// The drain in progress as the agent last heard of it, if any.
    pub drain: Option<DrainInfo>,
    /// What made the agent ready, as the supervisor saw it (`start`, `warm-up`, `health`,
    /// `notify`); the agent's own word (`notify`, `control`) is in its report and comes first.
    pub ready_source: Option<&'static str>,
    /// The agent's starts and exits (`--restart`), and the `--on-drain` command.
    pub runs: AgentRuns,
}

impl Default for RunStats {
    fn default() -> Self {
        RunStats {
            phase_since: SystemTime::now(),
            drains: BTreeMap::new(),
            agent_exit: None,
            agent_pid: None,
            agent_started: None,
            agent_cgroup: None,
            drain: None,
            ready_source: None,
            runs: AgentRuns::default(),
        }
    }
}

impl RunStats {
    /// How long the agent has run.
    pub fn agent_uptime(&self) -> Option<std::time::Duration> {
        self.agent_started.map(|t| t.elapsed())
    }
}

/// The agent's runs and its drain command, for `/status` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct AgentRuns {
    pub policy: RestartPolicy,
    /// Times an agent exited.
    pub exits: u64,
    /// Times the agent was started again.
    pub restarts: u64,
    /// The restarts ended in a crash loop (`--crash-loop`).
    pub crash_loop: bool,
    /// This run's `--on-drain` command, once started.
    pub drain_command: Option<DrainCommandStatus>,
}

/// The `--on-drain` command as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainCommandStatus {
    pub pid: i32,
    pub started: SystemTime,
    /// Its status once reaped (128+N for signal N).
    pub status: Option<u8>,
    /// The guard killed it (at the drain deadline, or when the agent was gone).
    pub killed: bool,
}
