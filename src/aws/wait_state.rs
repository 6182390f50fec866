//! Where the instance stands in its group's lifecycle (`DescribeAutoScalingInstances`'
//! `LifecycleState`), and when to look again while the termination hook is not waiting yet.
//!
//! IMDS says `Terminated` when the instance *starts* moving to Terminated. With a load balancer
//! attached, the group first deregisters the instance and waits for connection draining (the
//! target group's deregistration delay, 300 s by default, up to 3600 s); only then is the
//! instance in `Terminating:Wait`, and only then can the hook be heartbeaten or completed (AWS
//! user guide, "How lifecycle hooks work", steps 4–5). Before, both calls answer "No active
//! Lifecycle Action found", which is expected, not an error. IMDS cannot tell the current state
//! ("You cannot retrieve the current lifecycle state of the instance from the instance
//! metadata"), so the guard asks the API, as sparingly as the account-wide rate limit demands.

use std::time::Duration;

use crate::aws::api::{CallError, record_result};
use crate::aws::backoff;
use crate::aws::context::AwsContext;
use crate::aws::status::LifecycleBoard;
use crate::model::lifecycle_state::LifecycleState;

/// The longest deregistration delay a target group allows (`deregistration_delay.timeout_seconds`
/// is 0–3600): the wait state may come this late after the notice.
pub const MAX_DEREGISTRATION_DELAY: Duration = Duration::from_secs(3600);
/// The hook timeout assumed when the hook's own cannot be read (AWS's default HeartbeatTimeout).
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(3600);
/// The first look after the agent is gone comes at least this soon after the last.
const PROBE_MIN: Duration = Duration::from_secs(1);
/// Looks come at least this often, so the hook is completed within about this long (plus one
/// call) of the wait state beginning, however late it begins.
pub const PROBE_MAX: Duration = Duration::from_secs(12);

/// Where a termination stands, from the termination hook's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// The hook waits: heartbeat it while the agent drains, complete it once the agent is gone.
    Waiting(String),
    /// The group is on its way to the wait state (deregistering from the load balancer).
    Deregistering(String),
    /// The group shows no termination under way (yet): IMDS can run a moment ahead of the API.
    NotTerminating(String),
    /// Past the wait state, or out of its reach (completed, detached, in standby, warmed): there
    /// is nothing left to complete.
    Over(String),
}

impl Stage {
    /// Reads `LifecycleState` as the API writes it (`None`: the instance is in no group).
    pub fn of(state: Option<&str>) -> Stage {
        let Some(state) = state else {
            return Stage::Over("in no group".to_string());
        };
        use LifecycleState as L;
        let owned = state.to_string();
        match LifecycleState::parse(state) {
            // An instance going back to a warm pool waits in Warmed:Pending:Wait (ASGUG,
            // warm-pool-instance-lifecycle).
            L::TerminatingWait | L::WarmedTerminatingWait | L::WarmedPendingWait => {
                Stage::Waiting(owned)
            }
            L::Terminating | L::WarmedTerminating | L::WarmedPending => Stage::Deregistering(owned),
            L::TerminatingProceed
            | L::TerminatingRetained
            | L::Terminated
            | L::WarmedTerminatingProceed
            | L::WarmedTerminated
            | L::WarmedPendingProceed
            | L::WarmedStopped
            | L::WarmedRunning
            | L::WarmedHibernated
            | L::Detaching
            | L::Detached
            | L::EnteringStandby
            | L::Standby => Stage::Over(owned),
            // The states of a launch or of service, and any state AWS adds later.
            L::Pending
            | L::PendingWait
            | L::PendingProceed
            | L::Quarantined
            | L::InService
            | L::Other(_) => Stage::NotTerminating(owned),
        }
    }

    /// The state as the API wrote it.
    pub fn state(&self) -> &str {
        match self {
            Stage::Waiting(s)
            | Stage::Deregistering(s)
            | Stage::NotTerminating(s)
            | Stage::Over(s) => s,
        }
    }

    /// In words, for `/status` and the log.
    pub fn detail(&self) -> String {
        match self {
            Stage::Waiting(s) => format!("the instance is in {s}"),
            Stage::Deregistering(s) => format!("deregistration in progress ({s})"),
            Stage::NotTerminating(s) => {
                format!("the group shows no termination under way yet ({s})")
            }
            Stage::Over(s) => format!("nothing left to complete ({s})"),
        }
    }
}

/// How long the termination hook's work may wait for the wait state, counted from the drain's
/// start: the longest deregistration delay plus the hook's own timeout (after which the group
/// would have applied the default result anyway).
pub fn wait_bound(hook_timeout: Option<Duration>) -> Duration {
    MAX_DEREGISTRATION_DELAY.saturating_add(hook_timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT))
}

/// The next look, `since_drain` after the drain began: about as long again as has passed, and
/// up to twice that (jittered, so a fleet scaled in together spreads out), between [`PROBE_MIN`]
/// and [`PROBE_MAX`]. A short deregistration is caught in a few calls; a long one costs a call
/// per [`PROBE_MAX`] at most, which bounds how late after the wait state begins the hook is
/// completed.
pub fn next_look(since_drain: Duration) -> Duration {
    backoff::between(since_drain.max(PROBE_MIN), 0.75, 1.5).clamp(PROBE_MIN, PROBE_MAX)
}

/// `DescribeAutoScalingInstances` for this instance: its stage, or why it could not be read.
pub async fn look(aws: &AwsContext, board: &LifecycleBoard) -> Result<Stage, CallError> {
    let answer = aws
        .client
        .describe_auto_scaling_instances()
        .instance_ids(&aws.instance_id)
        .send()
        .await
        .map_err(|e| CallError::from(&e));
    record_result(board, "DescribeAutoScalingInstances", &answer);
    let out = answer?;
    let state = out
        .auto_scaling_instances()
        .iter()
        .find(|i| i.instance_id() == Some(aws.instance_id.as_str()))
        .and_then(|i| i.lifecycle_state());
    Ok(Stage::of(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_state_has_its_stage() {
        let cases = [
            ("Terminating:Wait", "waiting"),
            ("Warmed:Terminating:Wait", "waiting"),
            ("Warmed:Pending:Wait", "waiting"),
            ("Terminating", "deregistering"),
            ("Warmed:Terminating", "deregistering"),
            ("Warmed:Pending", "deregistering"),
            ("InService", "not-terminating"),
            ("Pending", "not-terminating"),
            ("Pending:Wait", "not-terminating"),
            ("Pending:Proceed", "not-terminating"),
            ("Quarantined", "not-terminating"),
            ("SomethingNew", "not-terminating"),
            ("Terminating:Proceed", "over"),
            ("Terminating:Retained", "over"),
            ("Terminated", "over"),
            ("Warmed:Terminating:Proceed", "over"),
            ("Warmed:Terminated", "over"),
            ("Warmed:Pending:Proceed", "over"),
            ("Warmed:Stopped", "over"),
            ("Warmed:Running", "over"),
            ("Warmed:Hibernated", "over"),
            ("Detaching", "over"),
            ("Detached", "over"),
            ("EnteringStandby", "over"),
            ("Standby", "over"),
        ];
        for (state, want) in cases {
            let stage = Stage::of(Some(state));
            let got = match stage {
                Stage::Waiting(_) => "waiting",
                Stage::Deregistering(_) => "deregistering",
                Stage::NotTerminating(_) => "not-terminating",
                Stage::Over(_) => "over",
            };
            assert_eq!(got, want, "{state}");
            assert_eq!(stage.state(), state);
        }
        assert_eq!(Stage::of(None), Stage::Over("in no group".to_string()));
    }

    #[test]
    fn looks_grow_with_the_wait_and_stay_within_the_bound() {
        for (since, low, high) in [
            (Duration::ZERO, 1.0, 1.5),
            (Duration::from_secs(4), 3.0, 6.0),
            (Duration::from_secs(10), 7.5, 12.0),
            (Duration::from_secs(90), 12.0, 12.0),
            (Duration::from_secs(100_000), 12.0, 12.0),
        ] {
            for _ in 0..100 {
                let d = next_look(since).as_secs_f64();
                assert!((low..=high).contains(&d), "{since:?}: {d}");
            }
        }
    }

    #[test]
    fn a_ninety_second_gap_costs_a_bounded_number_of_looks() {
        // Looks from an agent gone 2 s after the notice, until the wait state at 90 s.
        let mut at = Duration::from_secs(2);
        let mut looks = 0;
        while at < Duration::from_secs(90) {
            at += next_look(at);
            looks += 1;
        }
        assert!(at <= Duration::from_secs(90) + PROBE_MAX, "{at:?}");
        assert!((5..=20).contains(&looks), "{looks}");
    }

    #[test]
    fn the_bound_covers_the_longest_deregistration_and_the_hook_timeout() {
        assert_eq!(wait_bound(None), Duration::from_secs(7200));
        assert_eq!(
            wait_bound(Some(Duration::from_secs(30))),
            Duration::from_secs(3630)
        );
    }
}
