//! The whole state as the control socket's `status` reply and the body of `/status`: one type,
//! serialised by the guard and parsed by `ctl` and the drill, so the three cannot drift apart.
//!
//! Fields are declared in alphabetical order: the JSON users see (and README documents) lists
//! them so. Timestamps are RFC 3339 text; a name with an enum of its own is that enum (serde
//! writes its name); free text only where none exists (an agent's `STATUS=`, an event code EC2
//! may add tomorrow, `--cgroup`'s mode, shown empty when nothing was configured).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::load_balancer::{DeregisteredFor, DeregistrationEnd, TargetState};
use crate::model::{
    Awaiting, DrainReason, HookResult, HookState, NoticeKind, PhaseName, RestartPolicy,
};
use crate::names::named_enum;

/// The `status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The agent's exit code (128+N for a signal), once it exited.
    pub agent_exit: Option<u8>,
    pub agent_pid: Option<i32>,
    pub agent_uptime_s: Option<u64>,
    pub checks: Vec<CheckStatus>,
    /// What stands for the agent's processes (`--cgroup`), and a cgroup's figures.
    pub cgroup: CgroupView,
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
    pub policy: RestartPolicy,
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
    pub state: CommandState,
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
    pub kind: NoticeKind,
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
    pub state: HookState,
}

named_enum! {
    /// Where this run's `--on-drain` command stands.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum CommandState {
        Running = "running",
        Exited = "exited",
        /// The guard killed it: at the drain deadline, or when the agent was gone.
        Killed = "killed",
    }
}

named_enum! {
    /// What stands for the agent's processes: "every process of the agent is gone" means this is
    /// empty (`/status`'s `cgroup.tracked_by`, and the journal's `tracked_by`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum TrackedBy {
        /// Its own cgroup v2 (`--cgroup`).
        Cgroup = "cgroup",
        /// Its process group (no cgroup: `--cgroup off`, or none could be made).
        ProcessGroup = "process-group",
    }
}

/// `--cgroup`: what stands for the agent's processes, and, with a cgroup, its figures now.
/// Untagged, so that the JSON is the object users have read since `--cgroup` came (two shapes
/// told apart by `tracked_by`); a cgroup's shape is tried first, as the other's fields are a
/// subset of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CgroupView {
    Cgroup(CgroupFigures),
    ProcessGroup(ProcessGroupView),
}

/// The process group stands for the agent, and why (`None` with `--cgroup off`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessGroupView {
    /// `--cgroup` as configured (`auto`, `off`, `require`).
    pub mode: String,
    pub tracked_by: TrackedBy,
    pub why: Option<String>,
}

/// The agent's cgroup and its figures, each `None` where the kernel does not show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupFigures {
    /// The controllers enabled for it (`memory`, `pids` …).
    pub controllers: Vec<String>,
    pub cpu_usage_s: Option<f64>,
    pub memory_current: Option<u64>,
    /// `--memory-max` as applied, in bytes.
    pub memory_max: Option<u64>,
    pub memory_peak: Option<u64>,
    pub mode: String,
    pub oom_kills: Option<u64>,
    pub path: String,
    pub populated: bool,
    /// Pressure stall information, by resource, where the kernel has PSI on.
    pub pressure: PressureViews,
    pub processes: Option<u64>,
    pub tracked_by: TrackedBy,
}

/// One stall figure per resource; a resource without PSI is left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PressureViews {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<PressureView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<PressureView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<PressureView>,
}

/// The share of the last 10 s in which some (or all) of the agent's tasks stalled, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PressureView {
    pub full_avg10: Option<f64>,
    pub some_avg10: f64,
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
    /// The drain's reason, or `crash-loop`.
    pub reason: DeregisteredFor,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The two shapes of `cgroup`, field for field as the `json!` builder wrote them before the
    /// type (README documents them), and each read back as the same value.
    #[test]
    fn the_cgroup_view_reads_as_before_and_round_trips() {
        let cases = [
            (
                CgroupView::ProcessGroup(ProcessGroupView {
                    mode: "auto".into(),
                    tracked_by: TrackedBy::ProcessGroup,
                    why: Some("no cgroup v2 here".into()),
                }),
                r#"{"mode":"auto","tracked_by":"process-group","why":"no cgroup v2 here"}"#,
            ),
            (
                CgroupView::ProcessGroup(ProcessGroupView {
                    mode: "off".into(),
                    tracked_by: TrackedBy::ProcessGroup,
                    why: None,
                }),
                r#"{"mode":"off","tracked_by":"process-group","why":null}"#,
            ),
            (
                CgroupView::Cgroup(CgroupFigures {
                    controllers: vec!["memory".into(), "pids".into()],
                    cpu_usage_s: Some(1.25),
                    memory_current: Some(4096),
                    memory_max: None,
                    memory_peak: Some(8192),
                    mode: "require".into(),
                    oom_kills: Some(0),
                    path: "/sys/fs/cgroup/guard/agent".into(),
                    populated: true,
                    pressure: PressureViews {
                        cpu: Some(PressureView {
                            full_avg10: None,
                            some_avg10: 0.5,
                        }),
                        io: None,
                        memory: Some(PressureView {
                            full_avg10: Some(0.0),
                            some_avg10: 1.0,
                        }),
                    },
                    processes: Some(2),
                    tracked_by: TrackedBy::Cgroup,
                }),
                r#"{"controllers":["memory","pids"],"cpu_usage_s":1.25,"memory_current":4096,"memory_max":null,"memory_peak":8192,"mode":"require","oom_kills":0,"path":"/sys/fs/cgroup/guard/agent","populated":true,"pressure":{"cpu":{"full_avg10":null,"some_avg10":0.5},"memory":{"full_avg10":0.0,"some_avg10":1.0}},"processes":2,"tracked_by":"cgroup"}"#,
            ),
            (
                CgroupView::Cgroup(CgroupFigures {
                    controllers: vec![],
                    cpu_usage_s: None,
                    memory_current: None,
                    memory_max: None,
                    memory_peak: None,
                    mode: "auto".into(),
                    oom_kills: None,
                    path: "/x".into(),
                    populated: false,
                    pressure: PressureViews::default(),
                    processes: None,
                    tracked_by: TrackedBy::Cgroup,
                }),
                r#"{"controllers":[],"cpu_usage_s":null,"memory_current":null,"memory_max":null,"memory_peak":null,"mode":"auto","oom_kills":null,"path":"/x","populated":false,"pressure":{},"processes":null,"tracked_by":"cgroup"}"#,
            ),
        ];
        for (view, golden) in cases {
            let text = serde_json::to_string(&view).expect("JSON");
            assert_eq!(text, golden);
            let read: CgroupView = serde_json::from_str(&text).expect("a cgroup view");
            assert_eq!(read, view, "{text}");
        }
    }
}
