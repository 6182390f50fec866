//! Every Auto Scaling lifecycle state, read in one place: the target state IMDS serves
//! (`autoscaling/target-lifecycle-state`) and the current one `DescribeAutoScalingInstances`
//! answers (`LifecycleState`).
//!
//! The notice poller, the warm-pool hold, the termination hook's wait, the doctor and the drill
//! all decide on these states; they read them through [`LifecycleState::parse`] and match on
//! variants, so a state is spelt once. A state AWS adds later is kept as
//! [`LifecycleState::Other`] with its text, and each reader says what an unknown one means to it.
//! Pure: no I/O.

use crate::names::named_enum;

named_enum! {
    /// A lifecycle state as the API documents it (AWS Auto Scaling API reference,
    /// `Instance.LifecycleState`; IMDS serves the subset a target can be: `InService`,
    /// `Standby`, `Detached`, `Terminated`, `Warmed:Stopped|Running|Hibernated|Terminated`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum LifecycleState {
        Pending = "Pending",
        /// A launch hook waits.
        PendingWait = "Pending:Wait",
        PendingProceed = "Pending:Proceed",
        Quarantined = "Quarantined",
        InService = "InService",
        /// Leaving: deregistering from load balancers, before the termination hook waits.
        Terminating = "Terminating",
        /// The termination hook waits: it can be heartbeaten and completed.
        TerminatingWait = "Terminating:Wait",
        TerminatingProceed = "Terminating:Proceed",
        /// An instance lifecycle policy kept it after an ABANDON: running, billed, out of service.
        TerminatingRetained = "Terminating:Retained",
        Terminated = "Terminated",
        Detaching = "Detaching",
        Detached = "Detached",
        EnteringStandby = "EnteringStandby",
        Standby = "Standby",
        WarmedPending = "Warmed:Pending",
        /// A launch hook into the warm pool waits, or (with instance reuse) a termination hook
        /// of an instance going back to the pool.
        WarmedPendingWait = "Warmed:Pending:Wait",
        WarmedPendingProceed = "Warmed:Pending:Proceed",
        WarmedTerminating = "Warmed:Terminating",
        WarmedTerminatingWait = "Warmed:Terminating:Wait",
        WarmedTerminatingProceed = "Warmed:Terminating:Proceed",
        WarmedTerminated = "Warmed:Terminated",
        WarmedStopped = "Warmed:Stopped",
        WarmedRunning = "Warmed:Running",
        WarmedHibernated = "Warmed:Hibernated",
        _ => Other,
    }
}

impl LifecycleState {
    /// In (or on its way into, or out of) a warm pool: every `Warmed:*` state, an undocumented
    /// one included, since AWS names each pool state so.
    pub fn is_warmed(&self) -> bool {
        match self {
            LifecycleState::Other(text) => text.starts_with("Warmed:"),
            known => known.as_str().starts_with("Warmed:"),
        }
    }

    /// On its way out of the group or gone: the termination states, in or out of a warm pool.
    pub fn is_terminating(&self) -> bool {
        matches!(
            self,
            LifecycleState::Terminating
                | LifecycleState::TerminatingWait
                | LifecycleState::TerminatingProceed
                | LifecycleState::TerminatingRetained
                | LifecycleState::Terminated
                | LifecycleState::WarmedTerminating
                | LifecycleState::WarmedTerminatingWait
                | LifecycleState::WarmedTerminatingProceed
                | LifecycleState::WarmedTerminated
        )
    }

    /// Out of the group's lifecycle actions: standby, or detached (or on the way).
    pub fn is_standby_or_detached(&self) -> bool {
        matches!(
            self,
            LifecycleState::EnteringStandby
                | LifecycleState::Standby
                | LifecycleState::Detaching
                | LifecycleState::Detached
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented states, as the reference lists them (API `LifecycleState`, and the
    /// retained state of an instance lifecycle policy).
    const DOCUMENTED: [&str; 24] = [
        "Pending",
        "Pending:Wait",
        "Pending:Proceed",
        "Quarantined",
        "InService",
        "Terminating",
        "Terminating:Wait",
        "Terminating:Proceed",
        "Terminating:Retained",
        "Terminated",
        "Detaching",
        "Detached",
        "EnteringStandby",
        "Standby",
        "Warmed:Pending",
        "Warmed:Pending:Wait",
        "Warmed:Pending:Proceed",
        "Warmed:Terminating",
        "Warmed:Terminating:Wait",
        "Warmed:Terminating:Proceed",
        "Warmed:Terminated",
        "Warmed:Stopped",
        "Warmed:Running",
        "Warmed:Hibernated",
    ];

    #[test]
    fn every_documented_state_round_trips() {
        assert_eq!(LifecycleState::NAMES, DOCUMENTED);
        for name in DOCUMENTED {
            let state = LifecycleState::parse(name);
            assert!(!matches!(state, LifecycleState::Other(_)), "{name}");
            assert_eq!(state.as_str(), name);
            assert_eq!(state.to_string(), name);
            assert_eq!(
                LifecycleState::parse(&format!("{name}\n")),
                state,
                "trimmed"
            );
        }
    }

    #[test]
    fn an_unknown_state_is_kept_as_read() {
        for text in ["Exploding", "inservice", "Warmed:Frozen", ""] {
            let state = LifecycleState::parse(text);
            assert_eq!(state, LifecycleState::Other(text.to_string()));
            assert_eq!(state.as_str(), text);
        }
        assert!(LifecycleState::parse("Warmed:Frozen").is_warmed());
        assert!(!LifecycleState::parse("Exploding").is_warmed());
    }

    #[test]
    fn the_groups_of_states() {
        let warmed: Vec<_> = LifecycleState::KNOWN
            .into_iter()
            .filter(LifecycleState::is_warmed)
            .collect();
        assert_eq!(warmed.len(), 10);
        let leaving: Vec<_> = DOCUMENTED
            .into_iter()
            .filter(|s| s.contains("Terminat"))
            .collect();
        for state in LifecycleState::KNOWN {
            assert_eq!(
                state.is_terminating(),
                leaving.contains(&state.as_str()),
                "{state}"
            );
        }
    }
}
