//! The drill's report: the timeline of what happened, built from the same typed observations as
//! the verdict, and its rendering as text or as one JSON document.

use std::time::SystemTime;

use serde_json::json;

use crate::cli::DrillEvent;
use crate::journal::{Awaiting, MaintenanceStep, NoticeKind, Record};
use crate::machine::state::PhaseName;
use crate::model::lifecycle_state::LifecycleState;

use super::verdict::{HookCall, Observation, Timed, Verdict};

/// What the report says besides the observations: the words for this rehearsal.
pub struct Context {
    pub event: DrillEvent,
    /// The agent's command line, for the heading.
    pub command: String,
    /// `--ready-on` as given (`start`, `notify`, `30s` …).
    pub ready_on: String,
    /// What the drill posted, in words.
    pub notice: String,
    /// The summary line of a PASS.
    pub summary: String,
    pub json: bool,
}

/// One line of the timeline.
#[derive(Debug, Clone)]
struct Entry {
    /// Seconds from the notice (negative before it).
    offset: f64,
    what: &'static str,
    detail: String,
}

/// The drill's outcome, ready to print.
pub struct Report {
    context: Context,
    verdict: Verdict,
    timeline: Vec<Entry>,
    status: Option<u8>,
}

impl Report {
    /// The report of a rehearsal; `start` is when the drill began (the origin when no notice
    /// was posted).
    pub fn new(context: Context, verdict: Verdict, observed: &[Timed], start: SystemTime) -> Self {
        let status = observed.iter().find_map(|o| match o.what {
            Observation::GuardExit(status) => Some(status),
            _ => None,
        });
        Report {
            timeline: timeline(&context, observed, start),
            status: status.flatten(),
            context,
            verdict,
        }
    }

    pub fn pass(&self) -> bool {
        self.verdict.pass()
    }

    /// Prints the report on stdout.
    pub fn print(&self) {
        if self.context.json {
            println!("{}", self.json());
        } else {
            print!("{}", self.text());
        }
    }

    fn reasons(&self) -> Vec<String> {
        self.verdict
            .reasons
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn summary(&self) -> &str {
        if self.pass() {
            &self.context.summary
        } else {
            ""
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "event": self.context.event.as_str(),
            "command": self.context.command,
            "verdict": if self.pass() { "PASS" } else { "FAIL" },
            "reasons": self.reasons(),
            "summary": self.summary(),
            "notes": self.verdict.notes,
            "exit_status": self.status,
            "timeline": self.timeline.iter().map(|e| json!({
                "offset_ms": (e.offset * 1000.0).round() as i64,
                "what": e.what,
                "detail": e.detail,
            })).collect::<Vec<_>>(),
        })
    }

    fn text(&self) -> String {
        let mut out = format!(
            "\nagent-guard drill {}: {}\n\n",
            self.context.event.as_str(),
            self.context.command
        );
        out.push_str(&format!("{:>9}  {:<25} {}\n", "offset", "event", "detail"));
        for e in &self.timeline {
            out.push_str(&format!(
                "{:>+8.3}s  {:<25} {}\n",
                e.offset, e.what, e.detail
            ));
        }
        out.push('\n');
        if self.pass() {
            out.push_str(&format!("PASS: {}\n", self.summary()));
        } else {
            out.push_str("FAIL:\n");
            for r in self.reasons() {
                out.push_str(&format!("  - {r}\n"));
            }
        }
        for note in &self.verdict.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

/// The timeline, sorted, with offsets from the notice.
fn timeline(context: &Context, observed: &[Timed], start: SystemTime) -> Vec<Entry> {
    let notice_at = observed
        .iter()
        .find(|o| o.what == Observation::NoticePosted)
        .map(|o| o.at);
    let base = notice_at.unwrap_or(start);
    let offset = |t: SystemTime| match t.duration_since(base) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    let mut entries: Vec<(SystemTime, &'static str, String)> = Vec::new();
    let first_ready = observed
        .iter()
        .find(|o| o.what == Observation::Phase(PhaseName::Ready));
    if let Some(o) = first_ready {
        entries.push((
            o.at,
            "agent ready",
            format!("--ready-on {}", context.ready_on),
        ));
    }
    if let Some(t) = notice_at {
        entries.push((t, "notice posted", context.notice.clone()));
    }
    if let Some((t, detail)) = notice_seen(context.event, observed) {
        entries.push((t, "notice seen by the guard", detail));
    }
    if let Some(t) = notice_at.and_then(|_| readiness_lost(observed, first_ready.map(|o| o.at))) {
        let detail = "/readyz answers 503: the load balancer stops sending".to_string();
        entries.push((t, "readiness 503", detail));
    }
    entries.extend(told(observed, notice_at.is_some()));
    let mut seen: Vec<&'static str> = Vec::new();
    for o in observed {
        if let Some((what, detail)) = entry_for(&o.what) {
            // Calls are listed each; everything else once, at its first occurrence.
            let repeats = matches!(what, "heartbeat" | "lifecycle action");
            if repeats || !seen.contains(&what) {
                seen.push(what);
                entries.push((o.at, what, detail));
            }
        }
    }
    let mut timeline: Vec<Entry> = entries
        .into_iter()
        .map(|(t, what, detail)| Entry {
            offset: offset(t),
            what,
            detail,
        })
        .collect();
    timeline.sort_by(|a, b| a.offset.total_cmp(&b.offset));
    timeline
}

/// The moment readiness turned 503, by the earliest of three views of it: `/readyz` as polled,
/// the phase leaving `ready` on the control socket, and the guard's own transition record
/// (written before readiness and the agent hear of it, so from outside the truest time).
fn readiness_lost(observed: &[Timed], ready_at: Option<SystemTime>) -> Option<SystemTime> {
    let polled = observed
        .iter()
        .find(|o| o.what == Observation::ReadinessLost)
        .map(|o| o.at);
    let left_ready = ready_at.and_then(|ready| {
        observed
            .iter()
            .filter(|o| o.at >= ready)
            .find(|o| {
                matches!(o.what, Observation::Phase(p) if p != PhaseName::Ready && p != PhaseName::Starting)
            })
            .map(|o| o.at)
    });
    let transition = observed
        .iter()
        .find(|o| {
            matches!(
                o.what,
                Observation::Guard(Record::PhaseChanged {
                    phase: PhaseName::Draining | PhaseName::Stopping,
                    ..
                })
            )
        })
        .map(|o| o.at);
    [polled, left_ready, transition].into_iter().flatten().min()
}

/// When and how the guard saw what the drill posted.
fn notice_seen(event: DrillEvent, observed: &[Timed]) -> Option<(SystemTime, String)> {
    observed.iter().find_map(|o| {
        let detail = match (&o.what, event) {
            (
                Observation::Guard(Record::NoticeSeen {
                    kind: NoticeKind::LifecycleState,
                    value,
                    drain,
                }),
                DrillEvent::ScaleIn,
            ) if value == "Terminated" => match drain {
                Some(reason) => format!("target lifecycle state is {value}: {reason}"),
                None => format!("target lifecycle state is {value}"),
            },
            (
                Observation::Guard(Record::NoticeSeen {
                    kind: NoticeKind::Spot,
                    value,
                    ..
                }),
                DrillEvent::Spot,
            ) => format!("spot interruption notice: {value}"),
            (
                Observation::Guard(Record::NoticeSeen {
                    kind: NoticeKind::Rebalance,
                    drain,
                    ..
                }),
                DrillEvent::Rebalance,
            ) => match drain {
                Some(_) => "rebalance recommendation: draining".to_string(),
                None => "rebalance recommendation: reported only".to_string(),
            },
            (Observation::Guard(Record::StopSignalReceived { signal }), DrillEvent::Sigterm) => {
                format!("received {signal}")
            }
            (
                Observation::Guard(Record::NoticeSeen {
                    kind: NoticeKind::ScheduledEvent,
                    value,
                    ..
                }),
                DrillEvent::Maintenance,
            ) => format!("scheduled event {value}"),
            _ => return None,
        };
        Some((o.at, detail))
    })
}

/// How the agent was told to drain: a drain event or signal, else the stop signal itself.
fn told(observed: &[Timed], noticed: bool) -> Option<(SystemTime, &'static str, String)> {
    let announced = observed.iter().find_map(|o| match &o.what {
        Observation::Guard(Record::DrainAnnounced {
            subscribers,
            drain_signal,
            ..
        }) => Some((o.at, *subscribers, *drain_signal)),
        _ => None,
    });
    let command = observed.iter().any(|o| {
        matches!(
            o.what,
            Observation::Guard(Record::DrainCommandStarted { .. })
        )
    });
    if let Some((at, subscribers, signal)) = announced {
        let via = match (subscribers, signal, command) {
            (0, Some(sig), _) => format!("drain signal {sig}"),
            (0, None, true) => "the --on-drain command".to_string(),
            (n, None, _) => format!("drain event to {n} subscriber(s)"),
            (n, Some(sig), _) => {
                format!("drain event to {n} subscriber(s) and drain signal {sig}")
            }
        };
        return Some((at, "agent told to drain", via));
    }
    let stop = observed
        .iter()
        .find(|o| matches!(o.what, Observation::Guard(Record::StopSignalSent { .. })))?;
    noticed.then(|| {
        (
            stop.at,
            "agent told to drain",
            "by the stop signal itself: nobody subscribed and no --drain-signal".to_string(),
        )
    })
}

/// The timeline entry an observation stands for on its own, if any.
fn entry_for(what: &Observation) -> Option<(&'static str, String)> {
    Some(match what {
        Observation::Guard(record) => {
            return process_entry(record).or_else(|| lifecycle_entry(record));
        }
        Observation::HookCall(call) if call.action == "RecordLifecycleActionHeartbeat" => {
            ("heartbeat", outcome(call))
        }
        Observation::HookCall(call) if call.action == "CompleteLifecycleAction" => (
            "lifecycle action",
            format!(
                "{} {}: {}",
                call.hook,
                call.result.clone().unwrap_or_default(),
                outcome(call)
            ),
        ),
        Observation::HookCall(call) if call.action == "SetInstanceHealth" => {
            ("instance health", format!("Unhealthy: {}", outcome(call)))
        }
        Observation::GuardExit(status) => (
            "guard exit",
            status.map_or("killed by the drill".to_string(), |c| format!("status {c}")),
        ),
        Observation::InstanceState(LifecycleState::Terminating) => (
            "deregistering",
            "the group deregisters the instance from its load balancer: no lifecycle action yet"
                .to_string(),
        ),
        Observation::InstanceState(state @ LifecycleState::TerminatingWait) => (
            "wait state",
            format!("the group holds the instance in {state}: the hook can be completed"),
        ),
        Observation::TargetCall { action, status } if action == "DeregisterTargets" => (
            "deregistered",
            if *status == 200 {
                "DeregisterTargets: the load balancer drains the instance's connections".to_string()
            } else {
                format!("DeregisterTargets refused ({status}): --lb-grace holds readiness instead")
            },
        ),
        Observation::TargetCall { action, status } if action == "RegisterTargets" => (
            "registered again",
            format!("RegisterTargets ({status}): the drain was called off"),
        ),
        Observation::TargetState(state) if state == "unused" => (
            "load balancer done",
            "the target left draining: the load balancer sends nothing more".to_string(),
        ),
        _ => return None,
    })
}

/// What the guard said of the agent's processes and the drain, for the timeline.
fn process_entry(record: &Record) -> Option<(&'static str, String)> {
    Some(match record {
        Record::AgentDrained => (
            "agent drained",
            "it said so (drained / X_DRAINED=1)".to_string(),
        ),
        Record::StopSignalSent { signal, cgroup, .. } => (
            "stop signal",
            if *cgroup {
                format!("{signal} to every process in the agent's cgroup")
            } else {
                format!("{signal} to the agent's process group")
            },
        ),
        Record::LeftoversWaited {
            tracked_by,
            processes,
        } => (
            "guard waits",
            match processes {
                Some(n) => format!(
                    "for {n} process(es) the agent started, still in its {tracked_by}: the hook waits"
                ),
                None => format!("for what is left in the agent's {tracked_by}: the hook waits"),
            },
        ),
        Record::AllGone { tracked_by } => (
            "all gone",
            format!("every process of the agent is gone (its {tracked_by} is empty)"),
        ),
        Record::Killed { .. } => ("SIGKILL", "the grace period ran out".to_string()),
        Record::AgentExited { how, .. } => ("agent exit", how.clone()),
        Record::DrainCommandStarted { pid, .. } => (
            "on-drain started",
            format!("the --on-drain command (pid {pid})"),
        ),
        Record::DrainCommandFailed { error } => {
            ("on-drain failed", format!("could not start: {error}"))
        }
        Record::DrainCommandEnded { how, killed, .. } => (
            "on-drain ended",
            if *killed {
                format!("{how}, killed by the guard (drain deadline, or the agent was gone)")
            } else {
                how.clone()
            },
        ),
        _ => return None,
    })
}

/// What the guard said of the instance's lifecycle and scheduled events, for the timeline.
fn lifecycle_entry(record: &Record) -> Option<(&'static str, String)> {
    Some(match record {
        Record::ScheduledEvent { step, drain_at, .. } => (
            "scheduled event",
            match (step, drain_at) {
                (MaintenanceStep::MarkedUnhealthy, _) => {
                    "marked Unhealthy: the group replaces the instance".to_string()
                }
                (MaintenanceStep::FellBack, Some(at)) => {
                    format!("could not replace the instance: drains at {at}")
                }
                (MaintenanceStep::FellBack, None) => "could not replace the instance".to_string(),
                (MaintenanceStep::Draining, _) => {
                    "NotBefore minus --maintenance-margin: draining".to_string()
                }
                (MaintenanceStep::DrainCanceled, _) => "the drain was called off".to_string(),
            },
        ),
        Record::HookAwaiting {
            awaiting, detail, ..
        } => (
            "guard waits",
            match awaiting {
                Awaiting::WaitState => format!("for Terminating:Wait: {detail}"),
                Awaiting::OtherGuards => format!("for the other guards on this host: {detail}"),
                Awaiting::Termination => {
                    format!("for the group to terminate the instance: {detail}")
                }
            },
        ),
        Record::WaitStateSeen { state, .. } => (
            "wait state seen",
            format!("by the guard ({state}): heartbeats start"),
        ),
        _ => return None,
    })
}

fn outcome(call: &HookCall) -> String {
    match &call.error {
        Some(code) => format!("{code} ({})", call.status),
        None => format!("ok ({})", call.status),
    }
}
