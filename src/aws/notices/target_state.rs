//! The notice source `autoscaling/target-lifecycle-state`: scale-in (`Terminated`) and a return
//! to the warm pool (`Warmed:*` after `InService`) become drains; each new state is news once.

use super::{Clock, Decision, ImdsStatus, NoticeRecord, Source, VALUE_SHOWN};
use crate::fmt::capped;
use crate::journal::NoticeKind;
use crate::machine::state::DrainReason;
use crate::model::lifecycle_state::LifecycleState;

/// What this source reports.
pub const KIND: NoticeKind = NoticeKind::LifecycleState;

/// The target lifecycle state as last read.
#[derive(Debug, Clone, Default)]
pub struct TargetState {
    last_state: Option<String>,
    /// `InService` was seen: a later `Warmed:*` means going back to the warm pool.
    seen_in_service: bool,
    scale_in_sent: bool,
}

impl Source for TargetState {
    fn kind(&self) -> NoticeKind {
        KIND
    }

    fn path(&self) -> &'static str {
        "autoscaling/target-lifecycle-state"
    }

    fn publish(&self, value: &str, status: &mut ImdsStatus) {
        status.lifecycle_state = Some(capped(value.trim(), VALUE_SHOWN).into_owned());
    }

    /// `None` is a 404 (a brand-new instance): it says nothing.
    fn read(&mut self, value: Option<&str>, clock: Clock) -> Option<Decision> {
        let value = value?.trim();
        if self.last_state.as_deref() == Some(value) {
            return None;
        }
        let first = self.last_state.is_none();
        self.last_state = Some(value.to_string());
        let shown = capped(value, VALUE_SHOWN);
        let (drain, note) = self.decide(value, &shown, first);
        Some(Decision {
            record: NoticeRecord {
                kind: KIND,
                value: shown.to_string(),
                seen_at: clock.wall,
                drain,
            },
            drain: drain.map(|reason| (reason, None)),
            note,
            update: false,
        })
    }
}

impl TargetState {
    fn decide(&mut self, value: &str, shown: &str, first: bool) -> (Option<DrainReason>, String) {
        match LifecycleState::parse(value) {
            LifecycleState::InService => {
                self.seen_in_service = true;
                (None, "target lifecycle state is InService".to_string())
            }
            LifecycleState::Terminated if !self.scale_in_sent => {
                self.scale_in_sent = true;
                (
                    Some(DrainReason::ScaleIn),
                    "target lifecycle state is Terminated: scale-in".to_string(),
                )
            }
            LifecycleState::Terminated => (
                None,
                "target lifecycle state is Terminated again".to_string(),
            ),
            warmed if warmed.is_warmed() => {
                if self.seen_in_service {
                    (
                        Some(DrainReason::WarmPool),
                        format!("target lifecycle state is {shown}: going back to the warm pool"),
                    )
                } else if first {
                    (
                        None,
                        format!(
                            "target lifecycle state is {shown}: launched into a warm pool; the agent warms up"
                        ),
                    )
                } else {
                    (None, format!("target lifecycle state is {shown}"))
                }
            }
            LifecycleState::Detached | LifecycleState::Standby => (
                None,
                format!(
                    "target lifecycle state is {value}: no lifecycle hook applies, not draining"
                ),
            ),
            _ => (
                None,
                format!("unknown target lifecycle state `{shown}`: not draining"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drains(d: &Option<Decision>) -> Option<DrainReason> {
        d.as_ref().and_then(|d| d.drain.map(|(r, _)| r))
    }

    #[test]
    fn lifecycle_states_table() {
        let clock = Clock::now();
        // (states in order, the drain each one requests)
        let cases: &[(&[&str], &[Option<DrainReason>])] = &[
            (
                &["InService", "Terminated"],
                &[None, Some(DrainReason::ScaleIn)],
            ),
            (
                &["InService", "Terminated", "Terminated"],
                &[None, Some(DrainReason::ScaleIn), None],
            ),
            (&["Warmed:Stopped"], &[None]),
            (
                &["Warmed:Stopped", "InService", "Warmed:Hibernated"],
                &[None, None, Some(DrainReason::WarmPool)],
            ),
            (
                &["InService", "Standby", "InService", "Detached"],
                &[None, None, None, None],
            ),
            (&["InService", "Exploding"], &[None, None]),
        ];
        for (states, want) in cases {
            let mut source = TargetState::default();
            let got: Vec<_> = states
                .iter()
                .map(|s| drains(&source.read(Some(s), clock)))
                .collect();
            assert_eq!(&got, want, "{states:?}");
        }
        let mut source = TargetState::default();
        assert_eq!(source.read(None, clock), None, "a 404 says nothing");
        assert!(source.read(Some("InService"), clock).is_some());
        assert_eq!(
            source.read(Some("InService"), clock),
            None,
            "repeats are not news"
        );
    }
}
