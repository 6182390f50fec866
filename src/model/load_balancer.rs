//! The load-balancer step's snapshot: this instance's target groups as the guard last saw them
//! and its last deregistration, written only by `aws::deregistration` and read by `/status`
//! and `/metrics`. Nothing here is read from AWS on its own: the states are those the guard's
//! own calls answered (at set-up, and while a drain waits), so an idle guard makes no call.

use std::time::{Duration, SystemTime};

use crate::model::DrainReason;
use crate::names::named_enum;

named_enum! {
    /// A target's state as `DescribeTargetHealth` names it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum TargetState {
        /// Registration in progress.
        Initial = "initial",
        Healthy = "healthy",
        Unhealthy = "unhealthy",
        UnhealthyDraining = "unhealthy.draining",
        /// Not registered (any more): a deregistration that finished ends here.
        Unused = "unused",
        /// Deregistered; the load balancer drains its connections for the deregistration delay.
        Draining = "draining",
        /// Health checks are off for the group.
        Unavailable = "unavailable",
        /// The answer could not be read, or named a state this version does not know.
        Unknown = "unknown",
    }
}

named_enum! {
    /// How a deregistration ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum DeregistrationEnd {
        /// Every target left `draining`: the load balancer stopped sending.
        Done = "done",
        /// The wait was cut to the drain's budget (or `--deregistration-wait`) while targets
        /// still drained.
        Cut = "cut",
        /// `DeregisterTargets` was refused (no permission); `--lb-grace` held readiness instead.
        Refused = "refused",
        /// `DeregisterTargets` failed otherwise; `--lb-grace` held readiness instead.
        Failed = "failed",
    }
}

/// One target group this instance is registered in, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetGroupState {
    pub arn: String,
    /// The state of this instance's target(s) in it, as the last call that read it answered.
    pub state: TargetState,
    /// When that call answered.
    pub seen: SystemTime,
    /// `deregistration_delay.timeout_seconds`.
    pub delay: Duration,
}

/// Why the instance was taken out of its target groups: a drain the group does not deregister
/// for, or a crash loop that ended with the instance marked Unhealthy (no agent is left to
/// drain; the group replaces the instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeregisteredFor {
    Drain(DrainReason),
    CrashLoop,
}

impl DeregisteredFor {
    /// The name `/status` shows: the drain's reason, or `crash-loop`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeregisteredFor::Drain(reason) => reason.as_str(),
            DeregisteredFor::CrashLoop => "crash-loop",
        }
    }
}

impl std::fmt::Display for DeregisteredFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeregisteredFor {
    type Err = crate::names::UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == DeregisteredFor::CrashLoop.as_str() {
            return Ok(DeregisteredFor::CrashLoop);
        }
        s.parse().map(DeregisteredFor::Drain)
    }
}

impl serde::Serialize for DeregisteredFor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for DeregisteredFor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The last deregistration: begun for `reason` at `started`; `ended` once the agent could be told
/// (after a crash loop: once the load balancer let go, for the log and `/status` alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeregistrationRun {
    pub reason: DeregisteredFor,
    pub started: SystemTime,
    pub ended: Option<(SystemTime, DeregistrationEnd)>,
    /// How long the load balancer took to let go (until the end, whichever it was).
    pub took: Option<Duration>,
    /// When the targets were registered again, after the drain was called off.
    pub registered_again: Option<SystemTime>,
}

/// The whole snapshot. `active` is false when nothing stops a load balancer (the step is off):
/// `/status` then shows nothing of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadBalancerStatus {
    pub active: bool,
    pub target_groups: Vec<TargetGroupState>,
    pub deregistration: Option<DeregistrationRun>,
}
