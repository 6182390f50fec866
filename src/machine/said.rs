//! What one step of the supervisor says: its log lines and the journal records they carry,
//! decided by pure functions of the step (the event, the phase before and after, an action) and
//! a few facts the supervisor looked up, so that a table test reads them without a process.
//!
//! The supervisor calls [`of_step`] after each `step` and [`of_action`] before performing each
//! action, and logs what they return with [`Said::log`]. Records that report the outcome of I/O
//! (a spawn's pid, a reap's status, a signal actually sent) are made where that outcome is known.
//! The journal's field names are the tools' contract (the drill reads them); the text is for
//! people and may be reworded.

use std::time::{Duration, Instant};

use crate::fmt::format_duration;
use crate::journal::{Record, TimeoutOption};
use crate::machine::state::{
    Action, Cleanup, Ctx, Drain, DrainReason, DrainSkipped, Event, Phase, Restart,
};
use crate::model::status::TrackedBy;
use crate::model::{PhaseName, RestartPolicy};
use crate::process::exit::ChildExit;
use crate::process::sig::Sig;

/// What the supervisor looked up for this step, beside the step itself.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub ctx: &'a Ctx,
    /// What stands for the agent's processes.
    pub tracked_by: TrackedBy,
    /// What is left of the agent's processes now; looked at only when the phase after the step
    /// is `Exited` or `Done` (`None`: nothing is left).
    pub left: Option<Left>,
    /// The agent's process group.
    pub pgid: i32,
    /// Orphans the guard reaped so far (the line that ends the run).
    pub orphans_reaped: u64,
    /// Subscribers to drain events now.
    pub subscribers: usize,
}

/// Processes of the agent that are still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// How many, where they are counted (a cgroup); `None` for a process group.
    pub processes: Option<u64>,
}

/// One thing said: a log line, and the journal record it carries, if any.
#[derive(Debug, Clone, PartialEq)]
pub enum Said {
    AgentDrained,
    Ready,
    /// A later drain (a scale-in after an operator's) now decides how the run ends.
    DrainEndsInstance {
        reason: DrainReason,
    },
    DrainDeadlineEarlier {
        deadline_in: Duration,
    },
    /// Readiness is 503, and the load balancer is stopped before the agent hears of the drain.
    DrainHeld {
        reason: DrainReason,
    },
    Draining {
        reason: DrainReason,
        deadline_in: Duration,
    },
    /// A hard deadline (a spot notice) left less than a configured timeout.
    TimeoutCut {
        option: TimeoutOption,
        configured: Duration,
        given: Duration,
    },
    StopEndsInstance {
        reason: DrainReason,
    },
    Killing {
        reason: DrainReason,
    },
    Stopping {
        reason: DrainReason,
        sigkill_in: Duration,
        after_drain: bool,
    },
    AgentExited {
        exit: ChildExit,
    },
    LeftoversWaited {
        tracked_by: TrackedBy,
        processes: Option<u64>,
    },
    LeftoversOutlivedGrace {
        tracked_by: TrackedBy,
    },
    RestartScheduled {
        attempt: u32,
        delay: Duration,
        status: u8,
        policy: RestartPolicy,
    },
    AllGone {
        tracked_by: TrackedBy,
    },
    SurvivedKill {
        tracked_by: TrackedBy,
        pgid: i32,
    },
    Exiting {
        status: u8,
        orphans_reaped: u64,
    },
    Killed {
        tracked_by: TrackedBy,
        pgid: i32,
    },
    DrainAnnounced {
        reason: DrainReason,
        deadline_in: Duration,
        subscribers: usize,
        drain_signal: Option<Sig>,
        drain_command: bool,
    },
    ReadyTimedOut {
        ready_timeout: Duration,
    },
    Extended {
        until_in: Duration,
    },
    CrashLoop {
        starts: u32,
        within: Duration,
        status: u8,
    },
    DrainSkipped {
        reason: DrainReason,
        why: DrainSkipped,
        stop_timeout: Duration,
    },
}

/// What the step from `before` to `after` on `event` says, in the order it is logged.
pub fn of_step(event: &Event, before: &Phase, after: &Phase, facts: &Facts) -> Vec<Said> {
    let mut said = Vec::new();
    if *event == Event::Drained && matches!(before, Phase::Draining(_)) {
        said.push(Said::AgentDrained);
    }
    if before != after {
        transition(before, after, facts, &mut said);
    }
    said
}

fn transition(before: &Phase, after: &Phase, facts: &Facts, said: &mut Vec<Said>) {
    let now = facts.ctx.now;
    let until = |t: Instant| t.saturating_duration_since(now);
    match after {
        Phase::Starting { .. } => {}
        Phase::Ready => said.push(Said::Ready),
        Phase::Draining(d) => draining(before, d, facts, said),
        Phase::Stopping(s)
            if matches!(before, Phase::Stopping(_)) && before.drain_reason() != Some(s.reason) =>
        {
            said.push(Said::StopEndsInstance { reason: s.reason });
        }
        Phase::Stopping(s) if s.killed => said.push(Said::Killing { reason: s.reason }),
        Phase::Stopping(s) => {
            let was = match before {
                Phase::Stopping(b) => Some(b.kill_at),
                _ => None,
            };
            let option = TimeoutOption::StopTimeout;
            said.extend(cut(option, facts.ctx.stop_timeout, was, s.kill_at, now));
            said.push(Said::Stopping {
                reason: s.reason,
                sigkill_in: until(s.kill_at),
                after_drain: matches!(before, Phase::Draining(_)),
            });
        }
        Phase::Restarting(r) => restarting(before, r, facts, said),
        Phase::Exited { exit, cleanup } => exited(before, exit, cleanup, facts, said),
        Phase::Done(exit) => {
            let killed = matches!(
                before,
                Phase::Exited {
                    cleanup: Cleanup::Killed { .. },
                    ..
                }
            );
            let tracked_by = facts.tracked_by;
            said.push(match facts.left {
                Some(_) if killed => Said::SurvivedKill {
                    tracked_by,
                    pgid: facts.pgid,
                },
                _ => Said::AllGone { tracked_by },
            });
            said.push(Said::Exiting {
                status: exit.exit_code(),
                orphans_reaped: facts.orphans_reaped,
            });
        }
    }
}

fn draining(before: &Phase, d: &Drain, facts: &Facts, said: &mut Vec<Said>) {
    if !d.told && matches!(before, Phase::Draining(_)) {
        return;
    }
    let until = |t: Instant| t.saturating_duration_since(facts.ctx.now);
    let was = match before {
        Phase::Draining(b) if b.reason != d.reason => {
            said.push(Said::DrainEndsInstance { reason: d.reason });
            Some(b.deadline)
        }
        Phase::Draining(b) if d.deadline < b.deadline => {
            let deadline_in = until(d.deadline);
            said.push(Said::DrainDeadlineEarlier { deadline_in });
            Some(b.deadline)
        }
        // Moved later: the agent's extension, which `Extended` says.
        Phase::Draining(b) => Some(b.deadline),
        // The deadline is the load balancer's wait, not the agent's drain yet.
        _ if !d.told => {
            said.push(Said::DrainHeld { reason: d.reason });
            return;
        }
        _ => {
            let deadline_in = until(d.deadline);
            said.push(Said::Draining {
                reason: d.reason,
                deadline_in,
            });
            None
        }
    };
    let option = TimeoutOption::DrainTimeout;
    let now = facts.ctx.now;
    said.extend(cut(option, facts.ctx.drain_timeout, was, d.deadline, now));
}

/// The agent exited and is to start again; or a spawn failed and the next try is set.
fn restarting(before: &Phase, r: &Restart, facts: &Facts, said: &mut Vec<Said>) {
    if before.agent_running() {
        said.push(Said::AgentExited {
            exit: r.last.clone(),
        });
    }
    match before {
        Phase::Restarting(b) if b.attempt == r.attempt && b.at == r.at => {
            if let Some(Cleanup::Killed { .. }) = r.cleanup {
                let tracked_by = facts.tracked_by;
                said.push(Said::LeftoversOutlivedGrace { tracked_by });
            }
        }
        _ => said.push(Said::RestartScheduled {
            attempt: r.attempt,
            // Whole milliseconds, as the journal gives it.
            delay: Duration::from_millis(millis(r.at.saturating_duration_since(facts.ctx.now))),
            status: r.last.exit_code(),
            policy: facts.ctx.restart.policy,
        }),
    }
}

fn exited(
    before: &Phase,
    exit: &ChildExit,
    cleanup: &Cleanup,
    facts: &Facts,
    said: &mut Vec<Said>,
) {
    let tracked_by = facts.tracked_by;
    if let Phase::Exited { .. } = before {
        if let Cleanup::Killed { .. } = cleanup {
            said.push(Said::LeftoversOutlivedGrace { tracked_by });
        }
        return;
    }
    // After a restart delay, the exit was said when it happened.
    if before.agent_running() {
        said.push(Said::AgentExited { exit: exit.clone() });
        if let Some(left) = facts.left {
            said.push(Said::LeftoversWaited {
                tracked_by,
                processes: left.processes,
            });
        }
    }
}

/// A cut of a configured timeout by a hard deadline (a spot notice), and by how much. `was`:
/// when the phase ended before this step, if the phase is the same (a later notice recalculating
/// it); then only an earlier end is a cut. A phase entered now is cut when it ends sooner than
/// its option gives (both measured from `now`).
fn cut(
    option: TimeoutOption,
    configured: Duration,
    was: Option<Instant>,
    ends: Instant,
    now: Instant,
) -> Option<Said> {
    let given = ends.saturating_duration_since(now);
    let cut = match was {
        Some(was) => ends < was,
        None => given < configured,
    };
    cut.then_some(Said::TimeoutCut {
        option,
        configured,
        given,
    })
}

/// What performing `action` says, said before it is performed; `after` is the phase the step
/// left.
pub fn of_action(action: &Action, after: &Phase, facts: &Facts) -> Option<Said> {
    let ctx = facts.ctx;
    Some(match *action {
        Action::Kill => Said::Killed {
            tracked_by: facts.tracked_by,
            pgid: facts.pgid,
        },
        Action::AnnounceDrain { reason, deadline } => Said::DrainAnnounced {
            reason,
            deadline_in: deadline.saturating_duration_since(ctx.now),
            subscribers: facts.subscribers,
            drain_signal: ctx.drain_signal,
            drain_command: ctx.drain_command,
        },
        Action::ReadyTimedOut => Said::ReadyTimedOut {
            ready_timeout: ctx.ready_timeout,
        },
        Action::Extended { until } => Said::Extended {
            until_in: Duration::from_millis(millis(until.saturating_duration_since(ctx.now))),
        },
        Action::CrashLoop { starts, within } => Said::CrashLoop {
            starts,
            within,
            status: match after {
                Phase::Exited { exit, .. } | Phase::Done(exit) => exit.exit_code(),
                _ => 0,
            },
        },
        Action::DrainSkipped { reason, why } => Said::DrainSkipped {
            reason,
            why,
            stop_timeout: ctx.stop_timeout,
        },
        Action::Signal { .. }
        | Action::RunDrainCommand { .. }
        | Action::Spawn
        | Action::RestartCancelled { .. }
        | Action::HoldForLoadBalancer { .. }
        | Action::RegisterAgain { .. }
        | Action::DrainAfterExit { .. } => return None,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Where the agent's leftovers are, for people.
fn leftovers(tracked_by: TrackedBy) -> &'static str {
    match tracked_by {
        TrackedBy::Cgroup => "the agent's cgroup",
        TrackedBy::ProcessGroup => "the agent's group",
    }
}

impl Said {
    /// The phase a phase-change line announces, and its reason.
    fn phase_changed(&self) -> Option<(PhaseName, Option<DrainReason>)> {
        match *self {
            Said::Ready => Some((PhaseName::Ready, None)),
            Said::DrainEndsInstance { reason }
            | Said::DrainHeld { reason }
            | Said::Draining { reason, .. } => Some((PhaseName::Draining, Some(reason))),
            Said::StopEndsInstance { reason }
            | Said::Killing { reason }
            | Said::Stopping { reason, .. } => Some((PhaseName::Stopping, Some(reason))),
            _ => None,
        }
    }

    /// The journal record this line carries, if any.
    pub fn record(&self) -> Option<Record> {
        if let Some((phase, reason)) = self.phase_changed() {
            return Some(Record::PhaseChanged { phase, reason });
        }
        Some(match self {
            Said::TimeoutCut {
                option,
                configured,
                given,
            } => Record::TimeoutCut {
                option: *option,
                configured_ms: millis(*configured),
                given_ms: millis(*given),
            },
            Said::AgentExited { exit } => Record::AgentExited {
                pid: exit.pid(),
                status: exit.exit_code(),
                how: exit.to_string(),
            },
            Said::LeftoversWaited {
                tracked_by,
                processes,
            } => Record::LeftoversWaited {
                tracked_by: *tracked_by,
                processes: *processes,
            },
            Said::RestartScheduled {
                attempt,
                delay,
                status,
                ..
            } => Record::RestartScheduled {
                attempt: *attempt,
                delay_ms: millis(*delay),
                status: *status,
            },
            Said::AllGone { tracked_by } => Record::AllGone {
                tracked_by: *tracked_by,
            },
            Said::Killed { pgid, .. } => Record::Killed { pgid: *pgid },
            Said::DrainAnnounced {
                reason,
                deadline_in,
                subscribers,
                drain_signal,
                ..
            } => Record::DrainAnnounced {
                reason: *reason,
                deadline_in_ms: millis(*deadline_in),
                subscribers: *subscribers,
                drain_signal: *drain_signal,
            },
            Said::CrashLoop {
                starts,
                within,
                status,
            } => Record::CrashLoop {
                starts: *starts,
                within_ms: millis(*within),
                status: *status,
            },
            Said::AgentDrained => Record::AgentDrained,
            // Phase changes (answered above) and the lines with no record.
            _ => return None,
        })
    }

    /// Logs the line, with its record as the `journal` field.
    pub fn log(&self) {
        let journal = self.record().map(|r| r.json()).unwrap_or_default();
        let fd = format_duration;
        match self {
            Said::AgentExited { exit } => {
                tracing::info!(pid = exit.pid(), status = exit.exit_code(), journal = %journal, "agent {exit}")
            }
            Said::LeftoversWaited {
                tracked_by,
                processes,
            } => tracing::info!(
                processes,
                journal = %journal,
                "processes the agent started still run in {}: waiting for them",
                leftovers(*tracked_by)
            ),
            Said::LeftoversOutlivedGrace { tracked_by } => tracing::warn!(
                "processes left in {} outlived the grace period",
                leftovers(*tracked_by)
            ),
            Said::RestartScheduled {
                attempt,
                delay,
                policy,
                ..
            } => tracing::info!(
                attempt,
                restart_in = %fd(*delay),
                journal = %journal,
                "restarting the agent (--restart {policy})"
            ),
            Said::AllGone { tracked_by } => tracing::info!(
                journal = %journal,
                "every process of the agent is gone ({} is empty)",
                leftovers(*tracked_by)
            ),
            Said::SurvivedKill { tracked_by, pgid } => tracing::error!(
                pgid,
                "processes in {} survived SIGKILL (uninterruptible sleep?); exiting without them",
                leftovers(*tracked_by)
            ),
            Said::Exiting {
                status,
                orphans_reaped,
            } => tracing::info!(status, orphans_reaped, "the agent's run is over"),
            _ => self.log_action(&journal),
        }
    }

    /// The lines of actions, said as they are done.
    fn log_action(&self, journal: &str) {
        let fd = format_duration;
        match self {
            Said::Killed { tracked_by, pgid } => match tracked_by {
                TrackedBy::Cgroup => tracing::warn!(
                    pgid,
                    journal = %journal,
                    "sent SIGKILL to every process in the agent's cgroup (cgroup.kill)"
                ),
                TrackedBy::ProcessGroup => {
                    tracing::warn!(pgid, journal = %journal, "sent SIGKILL to the agent's process group")
                }
            },
            Said::DrainAnnounced { .. } => self.log_announced(journal),
            Said::ReadyTimedOut { ready_timeout } => tracing::warn!(
                ready_timeout = %fd(*ready_timeout),
                "the agent did not become ready within --ready-timeout"
            ),
            Said::Extended { until_in } => {
                tracing::info!(until_in = %fd(*until_in), "the agent asked for more time")
            }
            Said::CrashLoop {
                starts,
                within,
                status,
            } => tracing::error!(
                starts,
                within = %fd(*within),
                status,
                journal = %journal,
                "crash loop: {starts} starts within {}; the agent is not started again",
                fd(*within)
            ),
            Said::DrainSkipped {
                reason,
                why,
                stop_timeout,
            } => log_skipped(*reason, *why, *stop_timeout),
            _ => self.log_phase(journal),
        }
    }

    /// The lines of a phase change, and the agent's word that it is drained.
    fn log_phase(&self, journal: &str) {
        let fd = format_duration;
        match self {
            Said::AgentDrained => {
                tracing::info!(journal = %journal, "the agent says it is drained")
            }
            Said::Ready => tracing::info!(journal = %journal, "agent is ready"),
            Said::DrainEndsInstance { reason } => {
                tracing::info!(reason = %reason, journal = %journal, "the drain now ends the instance")
            }
            Said::DrainDeadlineEarlier { deadline_in } => {
                tracing::warn!(deadline_in = %fd(*deadline_in), "drain deadline moved earlier")
            }
            Said::DrainHeld { reason } => tracing::info!(
                reason = %reason,
                journal = %journal,
                "draining: readiness is 503; the agent hears of it once the load balancer stops sending"
            ),
            Said::Draining {
                reason,
                deadline_in,
            } => {
                tracing::info!(reason = %reason, deadline_in = %fd(*deadline_in), journal = %journal, "draining")
            }
            Said::TimeoutCut {
                option,
                configured,
                given,
            } => tracing::warn!(
                configured = %fd(*configured),
                given = %fd(*given),
                journal = %journal,
                "--{option} cut short by the spot interruption deadline: {} left",
                fd(*given)
            ),
            Said::StopEndsInstance { reason } => {
                tracing::info!(reason = %reason, journal = %journal, "the stop now ends the instance")
            }
            Said::Killing { reason } => {
                tracing::warn!(reason = %reason, journal = %journal, "killing the agent")
            }
            Said::Stopping {
                reason,
                sigkill_in,
                after_drain,
            } => {
                let what = if *after_drain {
                    "drain over; stopping the agent"
                } else {
                    "stopping the agent"
                };
                tracing::info!(reason = %reason, sigkill_in = %fd(*sigkill_in), journal = %journal, "{what}");
            }
            _ => {}
        }
    }

    /// Every way the agent is told of the drain.
    fn log_announced(&self, journal: &str) {
        let Said::DrainAnnounced {
            reason,
            deadline_in,
            subscribers,
            drain_signal,
            drain_command,
        } = self
        else {
            return;
        };
        let mut via = Vec::new();
        if *subscribers > 0 || (drain_signal.is_none() && !drain_command) {
            via.push(format!("drain event to {subscribers} subscriber(s)"));
        }
        via.extend(drain_signal.map(|sig| format!("drain signal {sig}")));
        if *drain_command {
            via.push("the --on-drain command".to_string());
        }
        tracing::info!(
            reason = %reason,
            deadline_in = %format_duration(*deadline_in),
            subscribers = *subscribers > 0,
            via = %via.join(" and "),
            journal = %journal,
            "told the agent to drain"
        );
    }
}

/// A drain asked for, and the stop signal sent at once instead: said, since no drain event,
/// `--drain-signal` or `--on-drain` follows.
fn log_skipped(reason: DrainReason, why: DrainSkipped, stop_timeout: Duration) {
    match why {
        // A SIGTERM to a guard without listeners is a plain stop, as under tini: not news.
        DrainSkipped::NoWayToTell if reason == DrainReason::Signal => tracing::debug!(
            reason = %reason,
            "no drain: nothing can tell the agent; sending the stop signal now"
        ),
        DrainSkipped::NoWayToTell => tracing::info!(
            reason = %reason,
            "no drain: nothing can tell the agent (no control-socket subscriber, no --drain-signal, no --on-drain); sending the stop signal now"
        ),
        DrainSkipped::NoTimeLeft { left } => tracing::warn!(
            reason = %reason,
            left = %format_duration(left),
            stop_timeout = %format_duration(stop_timeout),
            "no drain: the deadline leaves {}, no more than --stop-timeout ({}), so all of it goes to the stop grace; no drain event, --drain-signal or --on-drain; sending the stop signal now",
            format_duration(left),
            format_duration(stop_timeout)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::state::tests::ctx;
    use crate::machine::state::{State, Stop};

    const S: Duration = Duration::from_secs(1);

    fn facts(ctx: &Ctx, left: Option<Left>) -> Facts<'_> {
        Facts {
            ctx,
            tracked_by: TrackedBy::ProcessGroup,
            left,
            pgid: 42,
            orphans_reaped: 3,
            subscribers: 0,
        }
    }

    fn draining(reason: DrainReason, deadline: Instant, told: bool) -> Phase {
        Phase::Draining(Drain {
            reason,
            deadline,
            told,
            hard_deadline: None,
            signalled: false,
        })
    }

    fn stopping(reason: DrainReason, kill_at: Instant, killed: bool) -> Phase {
        Phase::Stopping(Stop {
            reason,
            kill_at,
            hard_deadline: None,
            killed,
            signalled: false,
        })
    }

    /// A name, the event, the phase before and after, what is left, and what is said.
    type Case = (&'static str, Event, Phase, Phase, Option<Left>, Vec<Said>);

    /// Each transition, and what it says, in order.
    #[test]
    fn each_step_says_what_happened_and_nothing_that_did_not() {
        let now = Instant::now();
        let exit = ChildExit::for_test(3);
        let exited = |cleanup| Phase::Exited {
            exit: exit.clone(),
            cleanup,
        };
        let signalled = Cleanup::Signalled { kill_at: now + S };
        let killed = Cleanup::Killed {
            give_up_at: now + S,
        };
        let restart = |attempt, at, cleanup| {
            Phase::Restarting(Restart {
                last: exit.clone(),
                attempt,
                at,
                cleanup,
            })
        };
        let some = Some(Left { processes: None });
        let (scale_in, operator) = (DrainReason::ScaleIn, DrainReason::Operator);
        let drained = Event::Drained;
        let timer = Event::Timer;
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("ready", Event::Spawned, Phase::Ready, Phase::Ready, None, vec![]),
            ("becomes ready", timer.clone(), State::new().phase, Phase::Ready, None, vec![Said::Ready]),
            ("a drain told at once", timer.clone(), Phase::Ready, draining(scale_in, now + 60 * S, true), None,
             vec![Said::Draining { reason: scale_in, deadline_in: 60 * S }]),
            ("a spot drain cut short", timer.clone(), Phase::Ready, draining(DrainReason::SpotInterruption, now + 20 * S, true), None,
             vec![Said::Draining { reason: DrainReason::SpotInterruption, deadline_in: 20 * S },
                  Said::TimeoutCut { option: TimeoutOption::DrainTimeout, configured: 60 * S, given: 20 * S }]),
            ("held for the load balancer", timer.clone(), Phase::Ready, draining(scale_in, now + 10 * S, false), None,
             vec![Said::DrainHeld { reason: scale_in }]),
            ("still held", timer.clone(), draining(operator, now + 10 * S, false), draining(scale_in, now + 5 * S, false), None, vec![]),
            ("a scale-in overtakes an operator drain", timer.clone(), draining(operator, now + 60 * S, true), draining(scale_in, now + 60 * S, true), None,
             vec![Said::DrainEndsInstance { reason: scale_in }]),
            ("an extension: said by Extended", timer.clone(), draining(scale_in, now + 60 * S, true), draining(scale_in, now + 90 * S, true), None, vec![]),
            ("a spot notice moves the deadline earlier", timer.clone(), draining(scale_in, now + 60 * S, true), draining(scale_in, now + 20 * S, true), None,
             vec![Said::DrainDeadlineEarlier { deadline_in: 20 * S },
                  Said::TimeoutCut { option: TimeoutOption::DrainTimeout, configured: 60 * S, given: 20 * S }]),
            ("the agent says it is drained", drained.clone(), draining(scale_in, now + 60 * S, true), stopping(scale_in, now + 30 * S, false), None,
             vec![Said::AgentDrained, Said::Stopping { reason: scale_in, sigkill_in: 30 * S, after_drain: true }]),
            ("drained, not draining: nothing", drained.clone(), Phase::Ready, Phase::Ready, None, vec![]),
            ("a stop with all of --stop-timeout: no cut", Event::StopSignal, Phase::Ready, stopping(DrainReason::Signal, now + 30 * S, false), None,
             vec![Said::Stopping { reason: DrainReason::Signal, sigkill_in: 30 * S, after_drain: false }]),
            ("a stop cut short", timer.clone(), Phase::Ready, stopping(DrainReason::SpotInterruption, now + 10 * S, false), None,
             vec![Said::TimeoutCut { option: TimeoutOption::StopTimeout, configured: 30 * S, given: 10 * S },
                  Said::Stopping { reason: DrainReason::SpotInterruption, sigkill_in: 10 * S, after_drain: false }]),
            ("a later notice, the same end: no cut", timer.clone(), stopping(DrainReason::SpotInterruption, now + 10 * S, false), stopping(DrainReason::SpotInterruption, now + 10 * S, true), None,
             vec![Said::Killing { reason: DrainReason::SpotInterruption }]),
            ("a stop overtaken", timer.clone(), stopping(DrainReason::Signal, now + 30 * S, false), stopping(scale_in, now + 30 * S, false), None,
             vec![Said::StopEndsInstance { reason: scale_in }]),
            ("the agent exits, nothing left", Event::ChildExited(exit.clone()), stopping(scale_in, now, false), exited(signalled.clone()), None,
             vec![Said::AgentExited { exit: exit.clone() }]),
            ("the agent exits, leftovers", Event::ChildExited(exit.clone()), Phase::Ready, exited(signalled.clone()), Some(Left { processes: Some(2) }),
             vec![Said::AgentExited { exit: exit.clone() },
                  Said::LeftoversWaited { tracked_by: TrackedBy::ProcessGroup, processes: Some(2) }]),
            ("leftovers killed", timer.clone(), exited(signalled.clone()), exited(killed.clone()), some,
             vec![Said::LeftoversOutlivedGrace { tracked_by: TrackedBy::ProcessGroup }]),
            ("all gone", Event::GroupGone, exited(signalled.clone()), Phase::Done(exit.clone()), None,
             vec![Said::AllGone { tracked_by: TrackedBy::ProcessGroup }, Said::Exiting { status: 3, orphans_reaped: 3 }]),
            ("survived SIGKILL", timer.clone(), exited(killed.clone()), Phase::Done(exit.clone()), some,
             vec![Said::SurvivedKill { tracked_by: TrackedBy::ProcessGroup, pgid: 42 }, Said::Exiting { status: 3, orphans_reaped: 3 }]),
            ("a restart scheduled", Event::ChildExited(exit.clone()), Phase::Ready, restart(1, now + 2 * S, None), None,
             vec![Said::AgentExited { exit: exit.clone() },
                  Said::RestartScheduled { attempt: 1, delay: 2 * S, status: 3, policy: RestartPolicy::Never }]),
            ("the restart's leftovers killed", timer.clone(), restart(1, now + 2 * S, Some(signalled.clone())), restart(1, now + 2 * S, Some(killed.clone())), None,
             vec![Said::LeftoversOutlivedGrace { tracked_by: TrackedBy::ProcessGroup }]),
            ("a failed spawn: the next try", Event::SpawnFailed, restart(1, now, None), restart(2, now + 4 * S, None), None,
             vec![Said::RestartScheduled { attempt: 2, delay: 4 * S, status: 3, policy: RestartPolicy::Never }]),
        ];
        for (name, event, before, after, left, want) in cases {
            let ctx = ctx(now);
            let got = of_step(&event, &before, &after, &facts(&ctx, left));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn actions_say_what_is_done() {
        let now = Instant::now();
        let ctx = Ctx {
            drain_signal: Some(Sig::USR1),
            ..ctx(now)
        };
        let after = Phase::Done(ChildExit::for_test(7));
        let facts = Facts {
            subscribers: 2,
            ..facts(&ctx, None)
        };
        let reason = DrainReason::ScaleIn;
        #[rustfmt::skip]
        let cases = [
            (Action::Kill, Some(Said::Killed { tracked_by: TrackedBy::ProcessGroup, pgid: 42 })),
            (Action::AnnounceDrain { reason, deadline: now + 9 * S },
             Some(Said::DrainAnnounced { reason, deadline_in: 9 * S, subscribers: 2, drain_signal: Some(Sig::USR1), drain_command: false })),
            (Action::CrashLoop { starts: 4, within: 60 * S }, Some(Said::CrashLoop { starts: 4, within: 60 * S, status: 7 })),
            (Action::ReadyTimedOut, Some(Said::ReadyTimedOut { ready_timeout: 600 * S })),
            (Action::Extended { until: now + 5 * S }, Some(Said::Extended { until_in: 5 * S })),
            (Action::DrainSkipped { reason, why: DrainSkipped::NoWayToTell },
             Some(Said::DrainSkipped { reason, why: DrainSkipped::NoWayToTell, stop_timeout: 30 * S })),
            (Action::Spawn, None),
            (Action::RestartCancelled { reason }, None),
        ];
        for (action, want) in cases {
            assert_eq!(of_action(&action, &after, &facts), want, "{action:?}");
        }
    }

    /// The records, field for field as the drill and log pipelines read them.
    #[test]
    fn the_records_keep_their_field_names() {
        let exit = ChildExit::for_test(3);
        #[rustfmt::skip]
        let cases = [
            (Said::AgentDrained, Some(r#"{"event":"agent_drained"}"#)),
            (Said::Ready, Some(r#"{"event":"phase_changed","phase":"ready","reason":null}"#)),
            (Said::DrainHeld { reason: DrainReason::ScaleIn }, Some(r#"{"event":"phase_changed","phase":"draining","reason":"scale-in"}"#)),
            (Said::Killing { reason: DrainReason::SpotInterruption }, Some(r#"{"event":"phase_changed","phase":"stopping","reason":"spot-interruption"}"#)),
            (Said::TimeoutCut { option: TimeoutOption::StopTimeout, configured: 30 * S, given: 5 * S },
             Some(r#"{"event":"timeout_cut","option":"stop-timeout","configured_ms":30000,"given_ms":5000}"#)),
            (Said::AgentExited { exit }, Some(r#"{"event":"agent_exited","pid":1,"status":3,"how":"exited with code 3"}"#)),
            (Said::LeftoversWaited { tracked_by: TrackedBy::Cgroup, processes: Some(2) },
             Some(r#"{"event":"leftovers_waited","tracked_by":"cgroup","processes":2}"#)),
            (Said::AllGone { tracked_by: TrackedBy::ProcessGroup }, Some(r#"{"event":"all_gone","tracked_by":"process-group"}"#)),
            (Said::RestartScheduled { attempt: 2, delay: 1500 * Duration::from_millis(1), status: 3, policy: RestartPolicy::Always },
             Some(r#"{"event":"restart_scheduled","attempt":2,"delay_ms":1500,"status":3}"#)),
            (Said::Killed { tracked_by: TrackedBy::Cgroup, pgid: 42 }, Some(r#"{"event":"killed","pgid":42}"#)),
            (Said::DrainAnnounced { reason: DrainReason::Operator, deadline_in: 9 * S, subscribers: 1, drain_signal: Some(Sig::USR1), drain_command: true },
             Some(r#"{"event":"drain_announced","reason":"operator","deadline_in_ms":9000,"subscribers":1,"drain_signal":"SIGUSR1"}"#)),
            (Said::CrashLoop { starts: 4, within: 60 * S, status: 1 }, Some(r#"{"event":"crash_loop","starts":4,"within_ms":60000,"status":1}"#)),
            (Said::Exiting { status: 0, orphans_reaped: 0 }, None),
            (Said::DrainDeadlineEarlier { deadline_in: S }, None),
        ];
        for (said, want) in cases {
            let got = said.record().map(|r| r.json());
            assert_eq!(got.as_deref(), want, "{said:?}");
            if let Some(text) = got {
                let back: Record = serde_json::from_str(&text).expect("a record");
                assert_eq!(Some(back), said.record());
            }
        }
    }
}
