//! The whole state as the control socket's `status` reply and the body of `/status`: one type,
//! serialised by the guard and parsed by `ctl` and the drill, so the three cannot drift apart.
//!
//! Fields are declared in alphabetical order: the JSON users see (and README documents) lists
//! them so. Timestamps are RFC 3339 text; names whose enums have no serde form yet are text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::load_balancer::{DeregistrationEnd, TargetState};
use crate::model::{Awaiting, DrainReason, HookResult, PhaseName};

/// The `status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The agent's exit code (128+N for a signal), once it exited.
    pub agent_exit: Option<u8>,
    pub agent_pid: Option<i32>,
    pub agent_uptime_s: Option<u64>,
    pub checks: Vec<CheckStatus>,
    /// What stands for the agent's processes (`--cgroup`) and a cgroup's figures: read from
    /// cgroupfs as they are, so kept as JSON (`ctl` and the drill only show it).
    pub cgroup: serde_json::Value,
    /// The drain in progress, while the agent runs.
    pub drain: Option<DrainStatus>,
    /// Drains started, by reason (a metric).
    pub drains: BTreeMap<String, u64>,
    pub health_listen: Option<String>,
    /// Why the agent is held back (`--in-warm-pool wait`).
    pub held: Option<String>,
    pub imds: Option<ImdsView>,
    pub in_flight: Option<u64>,
    pub in_flight_reported: Option<String>,
    pub lifecycle: Option<LifecycleView>,
    /// The load-balancer step (`--target-groups`, `--lb-grace`), when it is on.
    pub load_balancer: Option<LoadBalancerView>,
    pub name: String,
    /// Always `true`: the reply's success, as every reply says it.
    pub ok: bool,
    pub on_drain: Option<DrainCommandView>,
    pub phase: PhaseName,
    pub phase_since: String,
    pub ready_source: Option<String>,
    pub restart: RestartView,
    /// The agent's last sd_notify `STATUS=`.
    pub status: Option<String>,
    pub stopping: bool,
    pub subscribers: usize,
    pub uptime_s: u64,
    pub watchdog_missed: bool,
}

/// One dependency check (`--check`, `--child-health`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckStatus {
    pub checked: Option<String>,
    pub latency_ms: Option<f64>,
    pub name: String,
    pub ok: bool,
    pub target: Option<String>,
    pub why: String,
}

/// The drain in progress, as the agent heard of it (the reason that decides).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub deadline: String,
    pub deadline_in_ms: u64,
    pub reason: DrainReason,
}

/// `--restart`: the policy, the restarts so far, and while one is pending its attempt and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartView {
    pub attempt: Option<u32>,
    pub crash_loop: bool,
    pub next_in_ms: Option<u64>,
    pub policy: String,
    pub restarting: bool,
    pub restarts: u64,
    /// The next start also waits for the old agent's leftovers to go.
    pub waiting_for_leftovers: Option<bool>,
}

/// This run's `--on-drain` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainCommandView {
    pub pid: i32,
    pub started: String,
    /// `running`, `exited` or `killed`.
    pub state: String,
    pub status: Option<u8>,
}

/// What the guard knows of IMDS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImdsView {
    pub endpoint: String,
    pub errors: u64,
    pub instance_id: Option<String>,
    pub last_error: Option<String>,
    pub last_ok: Option<String>,
    pub last_poll: Option<String>,
    pub lifecycle_state: Option<String>,
    pub notices: Vec<NoticeView>,
    pub region: Option<String>,
    pub scheduled_events: Vec<ScheduledEventView>,
}

/// One notice read from IMDS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeView {
    pub drain: Option<DrainReason>,
    pub kind: String,
    pub seen: String,
    pub value: String,
}

/// One EC2 scheduled event, and what the guard does about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledEventView {
    pub code: String,
    pub drain_at: Option<String>,
    pub handling: String,
    pub id: String,
    pub listed: bool,
    pub not_after: Option<String>,
    pub not_before: String,
    pub state: String,
}

/// The lifecycle work: the group, the hooks, protection, and what it waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleView {
    pub error: Option<String>,
    pub group: Option<String>,
    pub heartbeat_interval_s: Option<f64>,
    pub instance_id: Option<String>,
    pub launch_hook: Option<HookView>,
    pub protected_from_scale_in: Option<bool>,
    pub terminate_hook: Option<HookView>,
    pub waiting_for: Option<WaitingView>,
}

/// One lifecycle hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookView {
    pub heartbeats: u64,
    pub last_error: Option<String>,
    pub name: String,
    pub result: Option<HookResult>,
    /// `waiting`, `heartbeating`, `completing`, `completed` …
    pub state: String,
}

/// What the termination hook's work waits for, since when, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingView {
    pub detail: String,
    pub since: String,
    pub text: String,
    pub what: Awaiting,
}

/// This instance's target groups as the guard last saw them, and its last deregistration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancerView {
    pub deregistration: Option<DeregistrationView>,
    pub target_groups: Vec<TargetGroupView>,
}

/// One target group this instance is registered in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetGroupView {
    pub arn: String,
    pub deregistration_delay_s: u64,
    /// When the guard last read the state (at set-up, or while a drain waited).
    pub seen: String,
    pub state: TargetState,
}

/// A deregistration: when it started and ended, how, and how long the load balancer took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeregistrationView {
    pub ended: Option<String>,
    pub outcome: Option<DeregistrationEnd>,
    pub reason: DrainReason,
    /// When the targets were registered again, after the drain was called off.
    pub registered_again: Option<String>,
    pub started: String,
    pub took_ms: Option<u64>,
}

impl Status {
    /// The reply as one JSON object (without the newline).
    pub fn json(&self) -> String {
        // Plain data: serialising it cannot fail; an empty object is the harmless fallback.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}
