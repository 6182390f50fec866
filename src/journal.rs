//! The guard's typed record of what it did, for the tools that judge it (the drill, and any log
//! pipeline) — never its human log text, which may be reworded freely.
//!
//! Each [`Record`] rides on the log line that tells a person the same thing, as the field
//! `journal`: the JSON log format (`--log-format json`) prints it as the object `"event": {…}`,
//! the text format leaves it out. One line, two audiences, and nothing to keep in step.

use serde::{Deserialize, Serialize};

use crate::model::status::TrackedBy;
pub use crate::model::{Awaiting, NoticeKind};
use crate::model::{DrainReason, HookResult, HookState, LifecycleState, PhaseName};
use crate::names::named_enum;
use crate::process::sig::Sig;

/// Something the guard did or saw, as tools read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    /// A notice was read from IMDS (a new value only).
    NoticeSeen {
        kind: NoticeKind,
        /// The target lifecycle state, or the notice's body.
        value: String,
        /// The drain it starts, if any.
        drain: Option<DrainReason>,
    },
    /// SIGTERM or SIGINT reached the guard.
    StopSignalReceived { signal: Sig },
    /// The supervisor's phase changed; logged before readiness and the agent hear of it.
    PhaseChanged {
        phase: PhaseName,
        reason: Option<DrainReason>,
    },
    /// The agent's listeners were told to drain.
    DrainAnnounced {
        reason: DrainReason,
        deadline_in_ms: u64,
        subscribers: usize,
        drain_signal: Option<Sig>,
    },
    /// The agent said it is drained.
    AgentDrained,
    /// A hard deadline (a spot notice) left less than a configured timeout.
    TimeoutCut {
        option: TimeoutOption,
        configured_ms: u64,
        given_ms: u64,
    },
    /// The stop signal went to the agent's process group, or to every process in its cgroup.
    StopSignalSent {
        signal: Sig,
        pgid: i32,
        #[serde(default)]
        cgroup: bool,
    },
    /// SIGKILL went to the agent's process group.
    Killed { pgid: i32 },
    /// The agent was reaped.
    AgentExited {
        pid: i32,
        status: u8,
        /// `exited with code N` or `killed by SIGNAL`.
        how: String,
    },
    /// The agent exited, and processes it started still run: the guard waits for them (and
    /// stops them) before it is done.
    LeftoversWaited {
        /// Where they are counted.
        tracked_by: TrackedBy,
        /// How many (in the cgroup; `None` for a process group).
        processes: Option<u64>,
    },
    /// Every process of the agent is gone: its cgroup empty, or its process group.
    AllGone { tracked_by: TrackedBy },
    /// The lifecycle work found its group and instance.
    HooksReady { group: String, instance_id: String },
    /// The lifecycle work could not start: no hook will be completed.
    HooksOff { error: String },
    /// A lifecycle hook's work ended.
    HookFinished {
        hook: String,
        result: HookResult,
        /// `completed`, `nothing-to-complete` or `gave-up`.
        state: HookState,
    },
    /// The `--on-drain` command started.
    DrainCommandStarted { pid: i32, reason: DrainReason },
    /// The `--on-drain` command could not be started; the drain goes on.
    DrainCommandFailed { error: String },
    /// The `--on-drain` command was reaped.
    DrainCommandEnded {
        pid: i32,
        status: u8,
        /// `exited with code N` or `killed by SIGNAL`.
        how: String,
        /// The guard killed it: at the drain deadline, or when the agent was gone.
        killed: bool,
    },
    /// The agent exited by itself and is to be started again (`--restart`).
    RestartScheduled {
        /// Restarts in a row since the delay last reset, this one included.
        attempt: u32,
        delay_ms: u64,
        /// The status of the agent that exited.
        status: u8,
    },
    /// The agent was started again.
    AgentRestarted { pid: i32, attempt: u32 },
    /// `--crash-loop`: so many starts within so long; no more restarts.
    CrashLoop {
        starts: u32,
        within_ms: u64,
        status: u8,
    },
    /// After a crash loop the instance was marked Unhealthy (`SetInstanceHealth`), so that the
    /// group replaces it.
    MarkedUnhealthy { group: String, instance_id: String },
    /// After a crash loop the instance could not be marked Unhealthy (outside a group, or
    /// refused); the guard exits all the same.
    NotMarkedUnhealthy { error: String },
    /// What the guard did about an EC2 scheduled event after it was first seen (`NoticeSeen`).
    ScheduledEvent {
        event_id: String,
        /// The event's code (`system-reboot` …).
        code: String,
        step: MaintenanceStep,
        /// When the drain is (or was) due, RFC 3339, if one is scheduled.
        drain_at: Option<String>,
    },
    /// `--in-warm-pool wait`: the agent is not started while the instance is in a warm pool.
    WarmPoolHeld {
        /// The target lifecycle state (`Warmed:Running` …).
        state: LifecycleState,
    },
    /// The instance left the warm pool (the target state is InService): the agent starts.
    WarmPoolReleased { state: LifecycleState },
    /// The termination hook's work waits: for the instance's wait state, or for other guards.
    HookAwaiting {
        hook: String,
        awaiting: Awaiting,
        /// The instance's lifecycle state, or the other guards, in words.
        detail: String,
    },
    /// The instance was seen in its wait state: heartbeats and the completion can start.
    WaitStateSeen { hook: String, state: LifecycleState },
    /// This guard's agent is gone, and another guard on the host completes the hook (or has).
    HookLeftToOthers {
        hook: String,
        /// What this guard's agent asks for.
        result: HookResult,
        /// The other guards, as `name (pid N)`.
        others: Vec<String>,
    },
}

/// A step in the handling of an EC2 scheduled event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaintenanceStep {
    /// `SetInstanceHealth` Unhealthy was accepted: the group replaces the instance.
    MarkedUnhealthy,
    /// Replacing was refused or impossible: the event is handled as with `--on-maintenance drain`.
    FellBack,
    /// The drain began, at NotBefore minus the margin.
    Draining,
    /// The event was canceled, completed or went away before its drain began.
    DrainCanceled,
}

impl Record {
    /// The record as one JSON object, for the `journal` field of a log line.
    pub fn json(&self) -> String {
        // Serializing plain data to a string cannot fail; an empty object is the harmless
        // fallback should it ever.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

named_enum! {
    /// A configured timeout a hard deadline can cut (`TimeoutCut`), named as its option.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum TimeoutOption {
        DrainTimeout = "drain-timeout",
        StopTimeout = "stop-timeout",
    }
}
