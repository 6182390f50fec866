//! Lifecycle hooks as every part names them: the result sent, where the work on a hook stands,
//! and what its work waits for.

use serde::{Deserialize, Serialize};

/// What the lifecycle hooks answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HookResult {
    Continue,
    Abandon,
}

impl HookResult {
    pub fn as_str(self) -> &'static str {
        match self {
            HookResult::Continue => "CONTINUE",
            HookResult::Abandon => "ABANDON",
        }
    }
}

/// What the termination hook's work is waiting for, once the agent is gone or while it drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Awaiting {
    /// The group holds the instance back (deregistering it from its load balancer) before the
    /// wait state in which the hook can be completed.
    WaitState,
    /// Other guards on this host whose agents still run.
    OtherGuards,
}

impl Awaiting {
    pub const ALL: [Awaiting; 2] = [Awaiting::WaitState, Awaiting::OtherGuards];

    /// The name in `/status`, metrics and the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Awaiting::WaitState => "wait-state",
            Awaiting::OtherGuards => "other-guards",
        }
    }
}

/// Where the work on one lifecycle hook stands. Its names (`as_str`, serde) are `/status`'s and
/// the journal's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookState {
    /// Nothing to do yet: no drain that ends the instance, or the agent is not ready.
    #[default]
    Waiting,
    /// A terminating drain runs: heartbeats keep the hook open.
    Heartbeating,
    /// The agent is gone: `CompleteLifecycleAction` is being sent.
    Completing,
    /// The group accepted the completion.
    Completed,
    /// The group held no lifecycle action for this instance.
    NothingToComplete,
    /// Completion failed for good (permission, or retries exhausted).
    GaveUp,
    /// The agent is gone; the instance is not in its wait state yet, or other guards on this host
    /// still run: see [`LifecycleStatus::awaiting`].
    Awaiting,
    /// The agent is gone, and another guard on this host completed the hook.
    #[serde(rename = "left-to-other-guards")]
    LeftToOthers,
}

impl HookState {
    /// The name in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookState::Waiting => "waiting",
            HookState::Heartbeating => "heartbeating",
            HookState::Completing => "completing",
            HookState::Completed => "completed",
            HookState::NothingToComplete => "nothing-to-complete",
            HookState::GaveUp => "gave-up",
            HookState::Awaiting => "awaiting",
            HookState::LeftToOthers => "left-to-other-guards",
        }
    }
}

/// One hook as `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookStatus {
    pub name: String,
    pub state: HookState,
    pub heartbeats: u64,
    pub result: Option<HookResult>,
    pub last_error: Option<String>,
}
