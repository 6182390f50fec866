//! What the lifecycle work (aws) shows of itself: one snapshot, written only by aws, read by
//! `/status` and `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::model::hooks::{Awaiting, HookStatus};

/// What `/status` and `/metrics` show of the lifecycle work.
#[derive(Debug, Clone, Default)]
pub struct LifecycleStatus {
    pub group: Option<String>,
    pub instance_id: Option<String>,
    pub heartbeat_interval: Option<Duration>,
    pub terminate: Option<HookStatus>,
    pub launch: Option<HookStatus>,
    /// Calls by (action, outcome).
    pub calls: BTreeMap<(&'static str, &'static str), u64>,
    /// A setup failure that turned hook completion off.
    pub error: Option<String>,
    /// Whether the instance is protected from scale-in (`--protect-while-busy`), if known.
    pub protected: Option<bool>,
    /// What the termination hook's work waits for, while it waits.
    pub awaiting: Option<AwaitingStatus>,
}

/// What the termination hook's work waits for, since when, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwaitingStatus {
    pub what: Awaiting,
    pub since: SystemTime,
    /// `deregistration in progress (Terminating)`, `indexer (pid 812)` …
    pub detail: String,
}

impl AwaitingStatus {
    /// One line: `waiting for Terminating:Wait since 14:02:11, deregistration in progress`.
    pub fn text(&self) -> String {
        let since = crate::fmt::rfc3339(self.since);
        // The time of day is what an operator compares with the clock on the wall.
        let clock = since.get(11..19).unwrap_or(&since);
        match self.what {
            Awaiting::WaitState => {
                format!(
                    "waiting for Terminating:Wait since {clock}, {}",
                    self.detail
                )
            }
            Awaiting::OtherGuards => format!(
                "waiting since {clock} for the other guards on this host: {}",
                self.detail
            ),
            Awaiting::Termination => format!(
                "waiting since {clock} for the group to terminate the instance: {}",
                self.detail
            ),
        }
    }
}
