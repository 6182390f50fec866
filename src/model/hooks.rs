//! Lifecycle hooks as every part names them: the result sent, where the work on a hook stands,
//! and what its work waits for.

use crate::names::named_enum;

named_enum! {
    /// What the lifecycle hooks answer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum HookResult {
        Continue = "CONTINUE",
        Abandon = "ABANDON",
    }
}

named_enum! {
    /// What the termination hook's work is waiting for, once the agent is gone or while it drains.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Awaiting {
        /// The group holds the instance back (deregistering it from its load balancer) before the
        /// wait state in which the hook can be completed.
        WaitState = "wait-state",
        /// Other guards on this host whose agents still run.
        OtherGuards = "other-guards",
        /// After a crash loop marked the instance Unhealthy: the group's termination of it
        /// (IMDS `target-lifecycle-state` Terminated), whose hook this guard then completes.
        Termination = "termination",
    }
}

named_enum! {
    /// Where the work on one lifecycle hook stands (its names are `/status`'s and the journal's).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub enum HookState {
        /// Nothing to do yet: no drain that ends the instance, or the agent is not ready.
        #[default]
        Waiting = "waiting",
        /// A terminating drain runs: heartbeats keep the hook open.
        Heartbeating = "heartbeating",
        /// The agent is gone: `CompleteLifecycleAction` is being sent.
        Completing = "completing",
        /// The group accepted the completion.
        Completed = "completed",
        /// The group held no lifecycle action for this instance.
        NothingToComplete = "nothing-to-complete",
        /// Completion failed for good (permission, or retries exhausted).
        GaveUp = "gave-up",
        /// The agent is gone; the instance is not in its wait state yet, or other guards on
        /// this host still run: see `LifecycleStatus::awaiting`.
        Awaiting = "awaiting",
        /// The agent is gone, and another guard on this host completed the hook.
        LeftToOthers = "left-to-other-guards",
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
