//! The drill's verdict: would the agent have lost work? A pure function of what was observed —
//! the guard's typed journal records, the phases heard on its control socket, the simulated
//! Auto Scaling API's call log and the drill's own measurements — so every reason to FAIL is
//! tested as a table, and rewording a log line cannot change a verdict.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::cli::DrillEvent;
use crate::config::OnMaintenance;
use crate::fmt::format_duration;
use crate::journal::Record;
use crate::machine::state::PhaseName;
use crate::model::lifecycle_state::LifecycleState;
use crate::process::exit::is_clean_status;
use crate::process::sig::Sig;

/// Something observed during the rehearsal, at a wall-clock time.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    pub at: SystemTime,
    pub what: Observation,
}

/// What the drill observed.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A journal record from the guard's JSON log.
    Guard(Record),
    /// A phase announced on the control socket.
    Phase(PhaseName),
    /// The drill posted the notice (or sent the signal).
    NoticePosted,
    /// `/readyz` answered 503.
    ReadinessLost,
    /// The agent never became ready within this long; the rehearsal stopped there.
    NeverReady { waited: Duration },
    /// With a report-only rebalance: whether the agent was still running and ready afterwards.
    KeptRunning(bool),
    /// The spot notice's time, as posted.
    SpotDeadline(SystemTime),
    /// A call the simulated Auto Scaling API answered.
    HookCall(HookCall),
    /// A scheduled event was posted: with `--on-maintenance drain` the drain may begin at
    /// `drain_from` (NotBefore minus the margin), and the agent must be gone by `not_before`.
    MaintenanceWindow {
        drain_from: SystemTime,
        not_before: SystemTime,
    },
    /// The guard's exit status; `None` when the drill had to kill it.
    GuardExit(Option<u8>),
    /// The simulated group put the instance in this lifecycle state.
    InstanceState(LifecycleState),
    /// A call the simulated Elastic Load Balancing v2 API answered (`DeregisterTargets` …).
    TargetCall { action: String, status: u16 },
    /// The instance's target entered this state in its target group (`draining`, `unused` once
    /// the load balancer let go, `initial` when registered again).
    TargetState(String),
}

/// A lifecycle call as the simulated Auto Scaling API logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookCall {
    pub action: String,
    pub hook: String,
    /// `LifecycleActionResult`, for a completion.
    pub result: Option<String>,
    pub status: u16,
    /// The error code, for an error answer.
    pub error: Option<String>,
}

/// What was rehearsed, and the options the verdict depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub event: DrillEvent,
    /// The termination hook's name: its completion, not the launch hook's, ends the stop.
    pub terminate_hook: String,
    pub stop_signal: Sig,
    /// A rebalance recommendation with `--on-rebalance ignore`: the agent must keep running.
    pub report_only: bool,
    pub spot_margin: Duration,
    pub on_maintenance: OnMaintenance,
}

/// Why a rehearsal failed. Each renders as one plain sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    NeverReady {
        waited: Duration,
    },
    StoppedByReportOnlyRebalance,
    Killed {
        stop_signal: Sig,
        after: Duration,
    },
    SpotSqueeze {
        given: Duration,
        configured: Duration,
        option: String,
    },
    Unclean {
        status: u8,
    },
    GuardHung,
    PastSpotDeadline {
        by: Duration,
    },
    /// The termination hook `hook` was completed with `result`, not CONTINUE.
    HookResult {
        hook: String,
        result: String,
    },
    /// The termination hook `hook` was not completed (a launch hook's completion does not count).
    HookNotCompleted {
        hook: String,
    },
    NotReplaced,
    DrainedEarly {
        by: Duration,
    },
    PastNotBefore {
        by: Duration,
    },
    /// The termination hook was completed before the guard saw every process of the agent
    /// gone (`by` earlier), or without ever seeing it (`None`).
    CompletedBeforeAllGone {
        by: Option<Duration>,
    },
    /// The agent heard of the drain while the load balancer still sent to it; `by` is how long
    /// before the target left `draining` (`None`: it never did during the rehearsal).
    ToldBeforeLoadBalancer {
        by: Option<Duration>,
    },
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::NeverReady { waited } => write!(
                f,
                "the agent never became ready (waited {})",
                format_duration(*waited)
            ),
            FailReason::StoppedByReportOnlyRebalance => f.write_str(
                "the agent did not keep running through a rebalance recommendation that only reports",
            ),
            FailReason::Killed { stop_signal, after } => write!(
                f,
                "the agent ignored {stop_signal} and was killed after {}",
                format_duration(*after)
            ),
            FailReason::SpotSqueeze {
                given,
                configured,
                option,
            } => write!(
                f,
                "the spot deadline left {} for a {} {}",
                format_duration(*given),
                format_duration(*configured),
                option.replace('-', " ")
            ),
            FailReason::Unclean { status } => {
                write!(f, "the agent did not stop cleanly: {}", exit_text(*status))
            }
            FailReason::GuardHung => {
                f.write_str("the guard did not finish in time and was killed by the drill")
            }
            FailReason::PastSpotDeadline { by } => write!(
                f,
                "the agent was still running {} past the spot deadline minus --spot-margin",
                format_duration(*by)
            ),
            FailReason::HookResult { hook, result } => write!(
                f,
                "the termination hook {hook} was completed with {result}, not CONTINUE"
            ),
            FailReason::HookNotCompleted { hook } => {
                write!(f, "the termination hook {hook} was not completed")
            }
            FailReason::NotReplaced => f.write_str(
                "the instance was not marked Unhealthy (SetInstanceHealth), so its group would not replace it",
            ),
            FailReason::DrainedEarly { by } => write!(
                f,
                "the drain began {} before NotBefore minus --maintenance-margin",
                format_duration(*by)
            ),
            FailReason::PastNotBefore { by } => write!(
                f,
                "the agent was still running {} past the scheduled event's NotBefore",
                format_duration(*by)
            ),
            FailReason::CompletedBeforeAllGone { by: Some(by) } => write!(
                f,
                "the lifecycle hook was completed {} before every process of the agent was gone",
                format_duration(*by)
            ),
            FailReason::CompletedBeforeAllGone { by: None } => f.write_str(
                "the lifecycle hook was completed while processes of the agent still ran (the guard never saw them all gone)",
            ),
            FailReason::ToldBeforeLoadBalancer { by: Some(by) } => write!(
                f,
                "the agent was told to drain {} before the load balancer stopped sending (its target left draining), and nothing forced it",
                format_duration(*by)
            ),
            FailReason::ToldBeforeLoadBalancer { by: None } => f.write_str(
                "the agent was told to drain while the load balancer still sent to it (its target never left draining), and nothing forced it",
            ),
        }
    }
}

/// The verdict: PASS when there is no reason to fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub reasons: Vec<FailReason>,
    /// What the report must say besides (a wait the budget cut, say); never a reason to fail.
    pub notes: Vec<String>,
}

impl Verdict {
    pub fn pass(&self) -> bool {
        self.reasons.is_empty()
    }
}

/// An exit status in words: `exited with code 1`, `killed by SIGKILL (status 137)`.
pub fn exit_text(code: u8) -> String {
    if code > 128 {
        match Sig::from_raw(i32::from(code) - 128) {
            Some(sig) => format!("killed by {sig} (status {code})"),
            None => format!("status {code}"),
        }
    } else {
        format!("exited with code {code}")
    }
}

/// Whole milliseconds, as the verdict's sentences show durations.
fn millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Judges a rehearsal from what was observed (in any order).
pub fn verdict(scenario: &Scenario, observed: &[Timed]) -> Verdict {
    let first = |pick: &dyn Fn(&Observation) -> bool| observed.iter().find(|o| pick(&o.what));
    if let Some(Timed {
        what: Observation::NeverReady { waited },
        ..
    }) = first(&|o| matches!(o, Observation::NeverReady { .. }))
    {
        return Verdict {
            reasons: vec![FailReason::NeverReady { waited: *waited }],
            notes: Vec::new(),
        };
    }
    let mut reasons = Vec::new();
    let kept = observed
        .iter()
        .any(|o| o.what == Observation::KeptRunning(true));
    if scenario.report_only && !kept {
        reasons.push(FailReason::StoppedByReportOnlyRebalance);
    }
    let killed = first(&|o| matches!(o, Observation::Guard(Record::Killed { .. })));
    let stop = first(&|o| matches!(o, Observation::Guard(Record::StopSignalSent { .. })));
    if let (Some(k), Some(s)) = (killed, stop) {
        reasons.push(FailReason::Killed {
            stop_signal: scenario.stop_signal,
            after: millis(k.at.duration_since(s.at).unwrap_or_default()),
        });
    }
    for o in observed {
        if let Observation::Guard(Record::TimeoutCut {
            option,
            configured_ms,
            given_ms,
        }) = &o.what
        {
            reasons.push(FailReason::SpotSqueeze {
                given: Duration::from_millis(*given_ms),
                configured: Duration::from_millis(*configured_ms),
                option: option.to_string(),
            });
        }
    }
    if !scenario.report_only {
        reasons.extend(stop_reasons(scenario, observed, killed.is_some()));
        reasons.extend(completed_before_all_gone(scenario, observed));
    }
    Verdict {
        reasons,
        notes: Vec::new(),
    }
}

/// What bounds the guard's wait for the load balancer, for [`load_balancer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadBalancerBudget {
    pub spot_margin: Duration,
    pub stop_timeout: Duration,
    pub drain_timeout: Duration,
    /// `--deregistration-wait DUR`: the user's own cap on the wait.
    pub wait_cap: Option<Duration>,
}

/// How much earlier than the target's leaving `draining` a telling may read and still come after
/// it: the guard's log times are cut to the millisecond, the simulator's are not. A guard that
/// tells before `DeregisterTargets` has answered is earlier by more (9 ms when that was a defect).
const CLOCKS: Duration = Duration::from_millis(3);

/// How much earlier than its bound a cut wait may tell the agent and still count as forced (the
/// guard and the drill read the bound on two clocks).
const BOUND_SLACK: Duration = Duration::from_millis(500);

/// The load balancer stops sending before the agent hears of the drain: after a deregistration,
/// telling the agent before the target left `draining` fails the drill, unless the budget forced
/// it (a spot deadline that must leave the agent its whole drain and stop budget, or the
/// user's `--deregistration-wait`), which is then noted. Returns the reasons and the notes.
pub fn load_balancer(budget: &LoadBalancerBudget, observed: &[Timed]) -> Verdict {
    let mut verdict = Verdict {
        reasons: Vec::new(),
        notes: Vec::new(),
    };
    let deregistered = observed.iter().find_map(|o| match &o.what {
        Observation::TargetCall {
            action,
            status: 200,
        } if action == "DeregisterTargets" => Some(o.at),
        _ => None,
    });
    let told = observed.iter().find_map(|o| match o.what {
        Observation::Guard(Record::DrainAnnounced { .. } | Record::StopSignalSent { .. }) => {
            Some(o.at)
        }
        _ => None,
    });
    let (Some(deregistered), Some(told)) = (deregistered, told) else {
        return verdict;
    };
    let done = observed.iter().find_map(|o| match &o.what {
        Observation::TargetState(state) if state == "unused" && o.at >= deregistered => Some(o.at),
        _ => None,
    });
    if done.is_some_and(|done| told + CLOCKS >= done) {
        return verdict;
    }
    let by = done
        .and_then(|done| done.duration_since(told).ok())
        .map(millis);
    let spot = observed.iter().find_map(|o| match o.what {
        Observation::SpotDeadline(t) => t
            .checked_sub(budget.spot_margin + budget.stop_timeout + budget.drain_timeout)
            .map(|bound| (bound, "the spot deadline left no more time: the agent's whole drain and stop budget came first")),
        _ => None,
    });
    let cap = budget
        .wait_cap
        .map(|cap| (deregistered + cap, "--deregistration-wait capped the wait"));
    let forced = [spot, cap]
        .into_iter()
        .flatten()
        .min_by_key(|(bound, _)| *bound)
        .filter(|(bound, _)| told + BOUND_SLACK >= *bound);
    match forced {
        Some((_, why)) => verdict.notes.push(match by {
            Some(by) => format!(
                "the agent was told {} before the load balancer stopped sending: {why}",
                format_duration(by)
            ),
            None => format!("the agent was told while the load balancer still drained: {why}"),
        }),
        None => verdict
            .reasons
            .push(FailReason::ToldBeforeLoadBalancer { by }),
    }
    verdict
}

/// For a drill that stops the agent: it stopped cleanly, in time, and the hook was completed.
fn stop_reasons(scenario: &Scenario, observed: &[Timed], killed: bool) -> Vec<FailReason> {
    let mut reasons = Vec::new();
    let status = observed.iter().find_map(|o| match o.what {
        Observation::GuardExit(status) => Some(status),
        _ => None,
    });
    let status = status.flatten();
    let clean = status.is_some_and(|code| !killed && is_clean_status(code, scenario.stop_signal));
    if !clean && !killed {
        reasons.push(match status {
            Some(status) => FailReason::Unclean { status },
            None => FailReason::GuardHung,
        });
    }
    let deadline = observed.iter().find_map(|o| match o.what {
        Observation::SpotDeadline(t) => Some(t),
        _ => None,
    });
    let exited = observed
        .iter()
        .find(|o| matches!(o.what, Observation::Guard(Record::AgentExited { .. })));
    if let (Some(deadline), Some(exited)) = (deadline, exited) {
        let kill_by = deadline
            .checked_sub(scenario.spot_margin)
            .unwrap_or(deadline);
        if let Ok(by) = exited.at.duration_since(kill_by) {
            reasons.push(FailReason::PastSpotDeadline { by: millis(by) });
        }
    }
    reasons.extend(maintenance_reasons(scenario, observed, exited));
    let replaces = scenario.event == DrillEvent::Maintenance
        && scenario.on_maintenance == OnMaintenance::Replace;
    if matches!(scenario.event, DrillEvent::ScaleIn | DrillEvent::Spot) || replaces {
        let completed = terminate_completions(scenario, observed)
            .next()
            .map(|(_, c)| c.result.clone().unwrap_or_default());
        match completed {
            Some(r) if r == "CONTINUE" => {}
            Some(result) => reasons.push(FailReason::HookResult {
                hook: scenario.terminate_hook.clone(),
                result,
            }),
            None => reasons.push(FailReason::HookNotCompleted {
                hook: scenario.terminate_hook.clone(),
            }),
        }
    }
    reasons
}

/// The termination hook's answered completions, in the order observed: the launch hook's (which
/// may be completed too, and before) is no part of the stop.
fn terminate_completions<'a>(
    scenario: &'a Scenario,
    observed: &'a [Timed],
) -> impl Iterator<Item = (SystemTime, &'a HookCall)> + 'a {
    observed.iter().filter_map(move |o| match &o.what {
        Observation::HookCall(c)
            if c.action == "CompleteLifecycleAction"
                && c.status == 200
                && c.hook == scenario.terminate_hook =>
        {
            Some((o.at, c))
        }
        _ => None,
    })
}

/// The invariant: the termination hook is completed only after every process of the agent is
/// gone, which the guard's `AllGone` record says (its cgroup empty, or its process group). A
/// completion of it that precedes that record, or has none at all, would have let the instance
/// go while the agent still worked.
fn completed_before_all_gone(scenario: &Scenario, observed: &[Timed]) -> Option<FailReason> {
    let completed = terminate_completions(scenario, observed)
        .map(|(at, _)| at)
        .min()?;
    let all_gone = observed
        .iter()
        .find(|o| matches!(o.what, Observation::Guard(Record::AllGone { .. })));
    match all_gone {
        None => Some(FailReason::CompletedBeforeAllGone { by: None }),
        Some(gone) => gone
            .at
            .duration_since(completed)
            .ok()
            .filter(|by| !by.is_zero())
            .map(|by| FailReason::CompletedBeforeAllGone {
                by: Some(millis(by)),
            }),
    }
}

/// For a scheduled event: replaced when asked to, drained neither early nor too late.
fn maintenance_reasons(
    scenario: &Scenario,
    observed: &[Timed],
    exited: Option<&Timed>,
) -> Vec<FailReason> {
    let mut reasons = Vec::new();
    let window = observed.iter().find_map(|o| match o.what {
        Observation::MaintenanceWindow {
            drain_from,
            not_before,
        } => Some((drain_from, not_before)),
        _ => None,
    });
    let Some((drain_from, not_before)) = window else {
        return reasons;
    };
    if scenario.on_maintenance == OnMaintenance::Replace {
        let marked = observed.iter().any(|o| {
            matches!(&o.what, Observation::HookCall(c) if c.action == "SetInstanceHealth" && c.status == 200)
        });
        if !marked {
            reasons.push(FailReason::NotReplaced);
        }
    }
    let began = observed.iter().find(|o| {
        matches!(
            o.what,
            Observation::Guard(Record::PhaseChanged {
                phase: PhaseName::Draining | PhaseName::Stopping,
                ..
            })
        )
    });
    if let Some(began) = began
        && scenario.on_maintenance == OnMaintenance::Drain
        && let Ok(by) = drain_from.duration_since(began.at)
        && !by.is_zero()
    {
        reasons.push(FailReason::DrainedEarly { by: millis(by) });
    }
    if let Some(exited) = exited
        && let Ok(by) = exited.at.duration_since(not_before)
    {
        reasons.push(FailReason::PastNotBefore { by: millis(by) });
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn scenario(event: DrillEvent) -> Scenario {
        Scenario {
            event,
            terminate_hook: "drill-hook".to_string(),
            stop_signal: Sig::TERM,
            report_only: false,
            spot_margin: 10 * S,
            on_maintenance: OnMaintenance::Replace,
        }
    }

    fn at(t0: SystemTime, offset_ms: u64, what: Observation) -> Timed {
        Timed {
            at: t0 + Duration::from_millis(offset_ms),
            what,
        }
    }

    fn completion(result: &str, status: u16) -> Observation {
        Observation::HookCall(HookCall {
            action: "CompleteLifecycleAction".to_string(),
            hook: "drill-hook".to_string(),
            result: Some(result.to_string()),
            status,
            error: (status != 200).then(|| "ValidationError".to_string()),
        })
    }

    /// The launch hook's completion (`launch-hook`), which is no part of a stop.
    fn launch_completion(result: &str) -> Observation {
        Observation::HookCall(HookCall {
            hook: "launch-hook".to_string(),
            ..match completion(result, 200) {
                Observation::HookCall(call) => call,
                _ => unreachable!("completion() is a hook call"),
            }
        })
    }

    /// The stop is judged by the termination hook's completion: the launch hook's, completed
    /// before (at readiness) or even after the notice, neither passes a stop whose termination
    /// hook was abandoned or never completed, nor fails one whose was completed with CONTINUE.
    #[test]
    fn the_stop_is_judged_by_the_termination_hooks_completion_not_the_launch_hooks() {
        let t0 = SystemTime::UNIX_EPOCH + 1_000_000 * S;
        let scale_in = scenario(DrillEvent::ScaleIn);
        let without_completion = || -> Vec<Timed> {
            clean_scale_in(t0 + S)
                .into_iter()
                .filter(|o| !matches!(o.what, Observation::HookCall(_)))
                .collect()
        };
        let with = |extra: Vec<Timed>| {
            let mut all = without_completion();
            all.extend(extra);
            all
        };
        let cases = [
            (
                "launch CONTINUE, termination ABANDON",
                with(vec![
                    at(t0, 0, launch_completion("CONTINUE")),
                    at(t0 + S, 30, completion("ABANDON", 200)),
                ]),
                vec![FailReason::HookResult {
                    hook: "drill-hook".to_string(),
                    result: "ABANDON".to_string(),
                }],
            ),
            (
                "only the launch hook completed",
                with(vec![at(t0, 0, launch_completion("CONTINUE"))]),
                vec![FailReason::HookNotCompleted {
                    hook: "drill-hook".to_string(),
                }],
            ),
            (
                "a launch ABANDON after the notice, termination CONTINUE",
                with(vec![
                    at(t0 + S, 5, launch_completion("ABANDON")),
                    at(t0 + S, 30, completion("CONTINUE", 200)),
                ]),
                vec![],
            ),
        ];
        for (name, observed, want) in cases {
            let mut observed = observed;
            observed.sort_by_key(|o| o.at);
            assert_eq!(verdict(&scale_in, &observed).reasons, want, "{name}");
        }
        let hook = || "drill-hook".to_string();
        assert_eq!(
            FailReason::HookNotCompleted { hook: hook() }.to_string(),
            "the termination hook drill-hook was not completed"
        );
        let result = "ABANDON".to_string();
        assert_eq!(
            FailReason::HookResult {
                hook: hook(),
                result
            }
            .to_string(),
            "the termination hook drill-hook was completed with ABANDON, not CONTINUE"
        );
    }

    fn exited(status: u8) -> Observation {
        Observation::Guard(Record::AgentExited {
            pid: 7,
            status,
            how: exit_text(status),
        })
    }

    fn stop_sent() -> Observation {
        Observation::Guard(Record::StopSignalSent {
            signal: crate::process::sig::Sig::TERM,
            pgid: 7,
            cgroup: false,
        })
    }

    /// A clean scale-in: the stop signal, the agent's exit, CONTINUE, status 143.
    fn clean_scale_in(t0: SystemTime) -> Vec<Timed> {
        vec![
            at(t0, 0, Observation::NoticePosted),
            at(t0, 10, stop_sent()),
            at(t0, 20, exited(143)),
            at(t0, 25, all_gone()),
            at(t0, 30, completion("CONTINUE", 200)),
            at(t0, 40, Observation::GuardExit(Some(143))),
        ]
    }

    fn all_gone() -> Observation {
        Observation::Guard(Record::AllGone {
            tracked_by: crate::model::status::TrackedBy::Cgroup,
        })
    }

    #[test]
    fn every_reason_to_fail_table() {
        let t0 = SystemTime::UNIX_EPOCH + 1_000_000 * S;
        let scale_in = scenario(DrillEvent::ScaleIn);
        let spot = scenario(DrillEvent::Spot);
        let report_only = Scenario {
            report_only: true,
            ..scenario(DrillEvent::Rebalance)
        };
        let with = |extra: Vec<Timed>| {
            let mut all = clean_scale_in(t0);
            all.extend(extra);
            all
        };
        let replace_exit = |status: Option<u8>| {
            let mut all: Vec<Timed> = clean_scale_in(t0)
                .into_iter()
                .filter(|o| !matches!(o.what, Observation::GuardExit(_)))
                .collect();
            all.push(at(t0, 40, Observation::GuardExit(status)));
            all
        };
        let cases: Vec<(&str, Scenario, Vec<Timed>, Vec<FailReason>)> = vec![
            (
                "a clean scale-in passes",
                scale_in.clone(),
                clean_scale_in(t0),
                vec![],
            ),
            (
                "never ready",
                scale_in.clone(),
                vec![at(t0, 0, Observation::NeverReady { waited: 2 * S })],
                vec![FailReason::NeverReady { waited: 2 * S }],
            ),
            (
                "a report-only rebalance that stopped the agent",
                report_only.clone(),
                vec![at(t0, 0, Observation::KeptRunning(false))],
                vec![FailReason::StoppedByReportOnlyRebalance],
            ),
            (
                "a report-only rebalance the agent kept running through passes",
                report_only.clone(),
                vec![at(t0, 0, Observation::KeptRunning(true))],
                vec![],
            ),
            (
                "SIGKILL after the grace",
                scale_in.clone(),
                vec![
                    at(t0, 10, stop_sent()),
                    at(t0, 1010, Observation::Guard(Record::Killed { pgid: 7 })),
                    at(t0, 1020, exited(137)),
                    at(t0, 1025, all_gone()),
                    at(t0, 1030, completion("ABANDON", 200)),
                    at(t0, 1040, Observation::GuardExit(Some(137))),
                ],
                vec![
                    FailReason::Killed {
                        stop_signal: Sig::TERM,
                        after: S,
                    },
                    FailReason::HookResult {
                        hook: "drill-hook".to_string(),
                        result: "ABANDON".to_string(),
                    },
                ],
            ),
            (
                "a spot deadline shorter than the stop timeout",
                spot.clone(),
                with(vec![at(
                    t0,
                    5,
                    Observation::Guard(Record::TimeoutCut {
                        option: crate::journal::TimeoutOption::StopTimeout,
                        configured_ms: 30_000,
                        given_ms: 5_000,
                    }),
                )]),
                vec![FailReason::SpotSqueeze {
                    given: 5 * S,
                    configured: 30 * S,
                    option: "stop-timeout".to_string(),
                }],
            ),
            (
                "an unclean exit",
                scale_in.clone(),
                replace_exit(Some(1)),
                vec![FailReason::Unclean { status: 1 }],
            ),
            (
                "a guard the drill had to kill",
                scale_in.clone(),
                replace_exit(None),
                vec![FailReason::GuardHung],
            ),
            (
                "the agent exited well before the spot deadline minus the margin",
                spot.clone(),
                with(vec![at(t0, 0, Observation::SpotDeadline(t0 + 120 * S))]),
                vec![],
            ),
            (
                "the agent exited past the spot deadline minus the margin",
                spot.clone(),
                with(vec![at(
                    t0,
                    0,
                    Observation::SpotDeadline(t0 + 10 * S - Duration::from_millis(500)),
                )]),
                vec![FailReason::PastSpotDeadline {
                    by: Duration::from_millis(520),
                }],
            ),
            (
                "the hook completed with ABANDON",
                scale_in.clone(),
                vec![
                    at(t0, 10, stop_sent()),
                    at(t0, 20, exited(143)),
                    at(t0, 25, all_gone()),
                    at(t0, 30, completion("ABANDON", 200)),
                    at(t0, 40, Observation::GuardExit(Some(143))),
                ],
                vec![FailReason::HookResult {
                    hook: "drill-hook".to_string(),
                    result: "ABANDON".to_string(),
                }],
            ),
            (
                "the hook was never completed (a refused call does not count)",
                scale_in.clone(),
                vec![
                    at(t0, 10, stop_sent()),
                    at(t0, 20, exited(0)),
                    at(t0, 30, completion("CONTINUE", 400)),
                    at(t0, 40, Observation::GuardExit(Some(0))),
                ],
                vec![FailReason::HookNotCompleted {
                    hook: "drill-hook".to_string(),
                }],
            ),
            (
                "a SIGTERM drill needs no hook",
                scenario(DrillEvent::Sigterm),
                replace_exit(Some(0))
                    .into_iter()
                    .filter(|o| !matches!(o.what, Observation::HookCall(_)))
                    .collect(),
                vec![],
            ),
        ];
        for (name, scenario, observed, want) in cases {
            let got = verdict(&scenario, &observed);
            assert_eq!(got.reasons, want, "{name}");
            assert_eq!(got.pass(), want.is_empty(), "{name}");
        }
    }

    /// A setsid grandchild still ran when the hook was completed: the agent's own exit and a
    /// clean status do not make that a pass.
    #[test]
    fn a_completion_before_every_process_is_gone_fails() {
        let t0 = SystemTime::UNIX_EPOCH + 1_000_000 * S;
        let scale_in = scenario(DrillEvent::ScaleIn);
        let launch = at(t0, 0, launch_completion("CONTINUE"));
        let timeline = |gone_at: Option<u64>| {
            let mut all: Vec<Timed> = clean_scale_in(t0 + S)
                .into_iter()
                .filter(|o| !matches!(o.what, Observation::Guard(Record::AllGone { .. })))
                .collect();
            all.push(launch.clone());
            all.extend(gone_at.map(|ms| at(t0 + S, ms, all_gone())));
            all
        };
        let cases = [
            ("all gone, then completed", Some(25), vec![]),
            ("in the same millisecond", Some(30), vec![]),
            (
                "completed 3s before all gone",
                Some(3030),
                vec![FailReason::CompletedBeforeAllGone { by: Some(3 * S) }],
            ),
            (
                "completed, never all gone",
                None,
                vec![FailReason::CompletedBeforeAllGone { by: None }],
            ),
        ];
        for (name, gone_at, want) in cases {
            assert_eq!(
                verdict(&scale_in, &timeline(gone_at)).reasons,
                want,
                "{name}"
            );
        }
        let reason = FailReason::CompletedBeforeAllGone { by: Some(3 * S) };
        assert_eq!(
            reason.to_string(),
            "the lifecycle hook was completed 3s before every process of the agent was gone"
        );
    }

    #[test]
    fn scheduled_event_reasons_table() {
        let t0 = SystemTime::UNIX_EPOCH + 1_000_000 * S;
        let with_mode = |on_maintenance| Scenario {
            on_maintenance,
            ..scenario(DrillEvent::Maintenance)
        };
        let (replace, drain) = (
            with_mode(OnMaintenance::Replace),
            with_mode(OnMaintenance::Drain),
        );
        let window = |from_ms, before_ms| {
            at(
                t0,
                0,
                Observation::MaintenanceWindow {
                    drain_from: t0 + Duration::from_millis(from_ms),
                    not_before: t0 + Duration::from_millis(before_ms),
                },
            )
        };
        let draining = at(
            t0,
            5,
            Observation::Guard(Record::PhaseChanged {
                phase: PhaseName::Draining,
                reason: None,
            }),
        );
        let marked = |status| {
            Observation::HookCall(HookCall {
                action: "SetInstanceHealth".to_string(),
                hook: String::new(),
                result: None,
                status,
                error: (status != 200).then(|| "AccessDenied".to_string()),
            })
        };
        let plus = |extra: Vec<Timed>| {
            let mut all = clean_scale_in(t0);
            all.extend(extra);
            all
        };
        let without_completion = |extra: Vec<Timed>| {
            let mut all: Vec<Timed> = plus(extra)
                .into_iter()
                .filter(|o| !matches!(&o.what, Observation::HookCall(c) if c.action == "CompleteLifecycleAction"))
                .collect();
            all.sort_by_key(|o| o.at);
            all
        };
        let cases: Vec<(&str, Scenario, Vec<Timed>, Vec<FailReason>)> = vec![
            (
                "replaced, then a clean scale-in",
                replace.clone(),
                plus(vec![window(600_000, 601_000), at(t0, 2, marked(200))]),
                vec![],
            ),
            (
                "a refused replacement",
                replace.clone(),
                without_completion(vec![window(600_000, 601_000), at(t0, 2, marked(403))]),
                vec![
                    FailReason::NotReplaced,
                    FailReason::HookNotCompleted {
                        hook: "drill-hook".to_string(),
                    },
                ],
            ),
            (
                "a drain at NotBefore minus the margin needs no hook",
                drain.clone(),
                without_completion(vec![window(5, 10_000), draining.clone()]),
                vec![],
            ),
            (
                "a drain before NotBefore minus the margin",
                drain.clone(),
                without_completion(vec![window(1005, 10_000), draining.clone()]),
                vec![FailReason::DrainedEarly { by: S }],
            ),
            (
                "an agent still running at NotBefore",
                drain.clone(),
                without_completion(vec![window(5, 15), draining]),
                vec![FailReason::PastNotBefore {
                    by: Duration::from_millis(5),
                }],
            ),
        ];
        for (name, scenario, observed, want) in cases {
            assert_eq!(verdict(&scenario, &observed).reasons, want, "{name}");
        }
    }

    #[test]
    fn reasons_read_as_sentences() {
        let cases = [
            (
                FailReason::Killed {
                    stop_signal: Sig::TERM,
                    after: S,
                },
                "the agent ignored SIGTERM and was killed after 1s",
            ),
            (
                FailReason::NeverReady { waited: 2 * S },
                "the agent never became ready (waited 2s)",
            ),
            (
                FailReason::SpotSqueeze {
                    given: 5 * S,
                    configured: 30 * S,
                    option: "stop-timeout".to_string(),
                },
                "the spot deadline left 5s for a 30s stop timeout",
            ),
            (
                FailReason::Unclean { status: 137 },
                "the agent did not stop cleanly: killed by SIGKILL (status 137)",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn the_agent_is_told_only_once_the_load_balancer_let_go_unless_the_budget_forced_it() {
        let t0 = SystemTime::UNIX_EPOCH + 1_000_000 * S;
        let budget = LoadBalancerBudget {
            spot_margin: 10 * S,
            stop_timeout: 15 * S,
            drain_timeout: 90 * S,
            wait_cap: None,
        };
        let deregister = |status| Observation::TargetCall {
            action: "DeregisterTargets".to_string(),
            status,
        };
        let gone = || Observation::TargetState("unused".to_string());
        let told = || {
            Observation::Guard(Record::DrainAnnounced {
                reason: crate::model::DrainReason::SpotInterruption,
                deadline_in_ms: 90_000,
                subscribers: 1,
                drain_signal: None,
            })
        };
        // The spot notice 120 s ahead: the wait may last until 120 - 10 - 15 - 90 = 5 s.
        let spot = at(t0, 120_000, Observation::NoticePosted);
        let spot = Timed {
            what: Observation::SpotDeadline(t0 + 120 * S),
            ..spot
        };
        let judge = |budget: &LoadBalancerBudget, observed: Vec<Timed>| {
            let v = load_balancer(budget, &observed);
            (v.reasons, v.notes.len())
        };
        // Told 0.1 s after the target left draining: pass, nothing to note.
        assert_eq!(
            judge(
                &budget,
                vec![
                    at(t0, 0, deregister(200)),
                    at(t0, 3000, gone()),
                    at(t0, 3100, told())
                ]
            ),
            (vec![], 0)
        );
        // Told within the guard's millisecond of it (its log time cut to the millisecond): pass.
        assert_eq!(
            judge(
                &budget,
                vec![
                    at(t0, 0, deregister(200)),
                    at(t0, 3000, gone()),
                    Timed {
                        at: t0 + Duration::from_micros(2_999_400),
                        what: told()
                    }
                ]
            ),
            (vec![], 0)
        );
        // Told 9 ms before it (before DeregisterTargets had answered, a defect once): FAIL.
        assert_eq!(
            judge(
                &budget,
                vec![
                    at(t0, 0, deregister(200)),
                    at(t0, 3000, gone()),
                    at(t0, 2991, told())
                ]
            ),
            (
                vec![FailReason::ToldBeforeLoadBalancer {
                    by: Some(Duration::from_millis(9))
                }],
                0
            )
        );
        // Told before it, with time left in the budget: FAIL, by how much.
        assert_eq!(
            judge(
                &budget,
                vec![
                    spot.clone(),
                    at(t0, 0, deregister(200)),
                    at(t0, 1000, told()),
                    at(t0, 3000, gone())
                ]
            ),
            (
                vec![FailReason::ToldBeforeLoadBalancer { by: Some(2 * S) }],
                0
            )
        );
        // Told at the budget's bound (5 s) while it still drained: forced, and noted.
        assert_eq!(
            judge(
                &budget,
                vec![
                    spot.clone(),
                    at(t0, 0, deregister(200)),
                    at(t0, 5050, told())
                ]
            ),
            (vec![], 1)
        );
        // The same without a spot deadline (a maintenance drain has none): FAIL, never done.
        assert_eq!(
            judge(
                &budget,
                vec![at(t0, 0, deregister(200)), at(t0, 5050, told())]
            ),
            (vec![FailReason::ToldBeforeLoadBalancer { by: None }], 0)
        );
        // ... unless --deregistration-wait capped it there.
        let capped = LoadBalancerBudget {
            wait_cap: Some(5 * S),
            ..budget
        };
        assert_eq!(
            judge(
                &capped,
                vec![at(t0, 0, deregister(200)), at(t0, 5050, told())]
            ),
            (vec![], 1)
        );
        // No deregistration (refused, or a scale-in the group deregistered): nothing to judge.
        assert_eq!(
            judge(
                &budget,
                vec![at(t0, 0, deregister(400)), at(t0, 10, told())]
            ),
            (vec![], 0)
        );
        assert_eq!(judge(&budget, vec![at(t0, 10, told())]), (vec![], 0));
    }
}
