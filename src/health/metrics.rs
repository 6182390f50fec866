//! `/metrics`: the Prometheus text format, one row of [`FAMILIES`] per metric family.
//!
//! Every family reads one [`Scrape`], taken once per request, so the whole text describes a
//! single moment. Families labelled by an enum (`phase`, `reason`, `kind`) list every variant,
//! zeros included, because a series that only appears once non-zero hides its first increase
//! from `rate()`. They read the variants from the enums: a new `PhaseName` or `DrainReason` gets
//! its series without touching this file, and a new notice source gets its `kind` series from the
//! sources' registry (`aws::notices::KINDS`).

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use crate::aws::notices::{ImdsStatus, KINDS};
use crate::aws::scheduled::{EventCode, EventState};
use crate::health::checks::Verdict;
use crate::health::views::Views;
use crate::journal::Awaiting;
use crate::machine::state::{DrainReason, Phase, PhaseName};
use crate::model::HookState;
use crate::model::hooks::HookStatus;
use crate::model::lifecycle::LifecycleStatus;
use crate::model::load_balancer::{LoadBalancerStatus, TargetState};
use crate::model::report::AgentReport;
use crate::model::run::RunStats;
use crate::process::cgroup::Usage;

/// The Prometheus text of `views` at this moment.
pub fn render(views: &Views) -> String {
    let scrape = Scrape::take(views);
    let mut out = String::new();
    for family in FAMILIES {
        if let Some(samples) = (family.samples)(&scrape) {
            family.write(&samples, &mut out);
        }
    }
    out
}

/// Everything the families read, copied out of the views at once (each lock taken once).
struct Scrape {
    phase: Phase,
    stats: RunStats,
    report: AgentReport,
    imds: ImdsStatus,
    verdicts: Vec<Verdict>,
    lifecycle: LifecycleStatus,
    watchdog_missed: bool,
    subscribers: usize,
    uptime: Duration,
    /// The wall clock at the scrape, for how long the hook work has waited.
    wall: SystemTime,
    /// The agent's resources, read from its cgroup at the scrape (kernfs reads, no waiting).
    usage: Option<Usage>,
    /// The target groups as last seen, and the last deregistration.
    load_balancer: LoadBalancerStatus,
}

impl Scrape {
    fn take(views: &Views) -> Scrape {
        // One statement per lock: a guard held to the end of a bigger expression would deadlock
        // with `watchdog_missed`, which takes the report's lock again.
        let now = Instant::now();
        let phase = views.phase.borrow().clone();
        let stats = views.run.borrow().clone();
        let report = views.report.borrow().clone();
        let imds = views.imds.borrow().clone();
        let verdicts = views.checks.borrow().verdicts(now);
        let lifecycle = views.lifecycle.borrow().clone();
        let watchdog_missed = views.watchdog_missed(now);
        let usage = views.tracking.cgroup.as_ref().map(|c| c.usage());
        let load_balancer = views.load_balancer.borrow().clone();
        Scrape {
            phase,
            stats,
            report,
            imds,
            verdicts,
            lifecycle,
            watchdog_missed,
            subscribers: views.subscribers(),
            uptime: views.uptime(),
            wall: SystemTime::now(),
            usage,
            load_balancer,
        }
    }
}

/// A metric family's type, as its `# TYPE` line names it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One sample of a family: its labels (name, unescaped value) and its value.
struct Sample {
    labels: Vec<(&'static str, String)>,
    value: f64,
}

impl Sample {
    fn new<const N: usize>(labels: [(&'static str, &str); N], value: f64) -> Sample {
        Sample {
            labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            value,
        }
    }
}

/// What a family yields: `None` leaves the family out entirely (its `HELP` and `TYPE` too), for
/// what the guard does not know at all (the agent never reported its work, protection is off);
/// an empty list keeps the header, for a family that simply has no series yet.
type Samples = Option<Vec<Sample>>;

/// One metric family: its header, and how its samples are read from a scrape.
struct Family {
    /// The family's name, which is also every sample's name (no `_bucket`-style suffixes here).
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: fn(&Scrape) -> Samples,
}

impl Family {
    fn write(&self, samples: &[Sample], out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} {}", self.kind.as_str());
        for sample in samples {
            let _ = write!(out, "{name}");
            if !sample.labels.is_empty() {
                let parts: Vec<String> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", parts.join(","));
            }
            let _ = writeln!(out, " {}", sample.value);
        }
    }
}

/// One unlabelled sample.
fn single(value: f64) -> Samples {
    Some(vec![Sample::new([], value)])
}

/// 1 or 0.
fn flag(on: bool) -> f64 {
    f64::from(u8::from(on))
}

/// Every metric, in the order of the text. Long but flat, on purpose: each row reads as the
/// family it writes, header and samples side by side.
const FAMILIES: &[Family] = &[
    Family {
        name: "agent_guard_phase",
        kind: Kind::Gauge,
        help: "The supervisor's phase: 1 for the current one.",
        samples: |s| {
            let current = s.phase.name();
            let each =
                PhaseName::ALL.map(|p| Sample::new([("phase", p.as_str())], flag(p == current)));
            Some(each.into())
        },
    },
    Family {
        name: "agent_guard_drains_total",
        kind: Kind::Counter,
        help: "Drains started, by reason.",
        samples: |s| {
            let count = |r: DrainReason| s.stats.drains.get(&r).copied().unwrap_or(0) as f64;
            let each = DrainReason::ALL.map(|r| Sample::new([("reason", r.as_str())], count(r)));
            Some(each.into())
        },
    },
    Family {
        name: "agent_guard_notices_total",
        kind: Kind::Counter,
        help: "IMDS notices seen, by kind.",
        samples: |s| {
            // Counted since start: the list of notices keeps only the latest.
            // The label table is the notice sources' registry.
            let each = KINDS.iter().map(|kind| {
                Sample::new([("kind", kind.as_str())], s.imds.notices_of(*kind) as f64)
            });
            Some(each.collect())
        },
    },
    Family {
        name: "agent_guard_maintenance_events",
        kind: Kind::Gauge,
        help: "EC2 scheduled events listed as active, by code.",
        samples: |s| {
            let active = |code: EventCode| {
                let listed = s.imds.scheduled_events.iter().filter(|t| t.listed);
                listed
                    .filter(|t| t.event.code == code && t.event.state == EventState::Active)
                    .count() as f64
            };
            let each = EventCode::ALL.map(|c| Sample::new([("code", c.as_str())], active(c)));
            Some(each.into())
        },
    },
    Family {
        name: "agent_guard_imds_errors_total",
        kind: Kind::Counter,
        help: "Failed IMDS reads.",
        samples: |s| single(s.imds.errors_total as f64),
    },
    Family {
        name: "agent_guard_log_lines_dropped_total",
        kind: Kind::Counter,
        help: "The guard's log lines dropped because stderr was not read fast enough.",
        samples: |_| single(crate::logging::dropped_lines() as f64),
    },
    Family {
        name: "agent_guard_check_up",
        kind: Kind::Gauge,
        help: "Whether a check passes (1) or fails (0); stale results fail.",
        samples: |s| {
            let up = |v: &Verdict| Sample::new([("check", v.name.as_str())], flag(v.ok));
            Some(s.verdicts.iter().map(up).collect())
        },
    },
    Family {
        name: "agent_guard_check_latency_seconds",
        kind: Kind::Gauge,
        help: "How long the last probe of a check took.",
        samples: |s| {
            let measured = s
                .verdicts
                .iter()
                .filter_map(|v| Some((v.name.as_str(), v.result.as_ref()?)));
            let each =
                measured.map(|(name, r)| Sample::new([("check", name)], r.latency.as_secs_f64()));
            Some(each.collect())
        },
    },
    Family {
        name: "agent_guard_agent_up",
        kind: Kind::Gauge,
        help: "1 while the agent runs.",
        samples: |s| single(flag(s.phase.agent_running())),
    },
    Family {
        name: "agent_guard_agent_exits_total",
        kind: Kind::Counter,
        help: "Times the agent exited.",
        samples: |s| single(s.stats.runs.exits as f64),
    },
    Family {
        name: "agent_guard_agent_restarts_total",
        kind: Kind::Counter,
        help: "Times the agent was started again (--restart).",
        samples: |s| single(s.stats.runs.restarts as f64),
    },
    Family {
        name: "agent_guard_agent_oom_kills_total",
        kind: Kind::Counter,
        help: "Processes of the agent the kernel's OOM killer ended (memory.events oom_kill; only with the memory controller).",
        samples: |s| single(s.usage.as_ref()?.oom_kills? as f64),
    },
    Family {
        name: "agent_guard_agent_memory_bytes",
        kind: Kind::Gauge,
        help: "Memory of the agent's cgroup (memory.current).",
        samples: |s| single(s.usage.as_ref()?.memory_current? as f64),
    },
    Family {
        name: "agent_guard_agent_memory_peak_bytes",
        kind: Kind::Gauge,
        help: "The most memory the agent's cgroup used (memory.peak).",
        samples: |s| single(s.usage.as_ref()?.memory_peak? as f64),
    },
    Family {
        name: "agent_guard_agent_cpu_seconds_total",
        kind: Kind::Counter,
        help: "CPU time of every process in the agent's cgroup (cpu.stat usage_usec).",
        samples: |s| single(s.usage.as_ref()?.cpu_usage_usec? as f64 / 1e6),
    },
    Family {
        name: "agent_guard_agent_processes",
        kind: Kind::Gauge,
        help: "Processes in the agent's cgroup.",
        samples: |s| single(s.usage.as_ref()?.processes? as f64),
    },
    Family {
        name: "agent_guard_agent_pressure_stalled_seconds_total",
        kind: Kind::Counter,
        help: "Time the agent's processes stalled on a resource (PSI total), by resource and kind (some: at least one; full: all).",
        samples: |s| {
            let usage = s.usage.as_ref()?;
            let mut each = Vec::new();
            for (resource, p) in &usage.pressure {
                let secs = |usec: u64| usec as f64 / 1e6;
                each.push(Sample::new(
                    [("resource", *resource), ("kind", "some")],
                    secs(p.some_total_usec),
                ));
                if let Some(full) = p.full_total_usec {
                    each.push(Sample::new(
                        [("resource", *resource), ("kind", "full")],
                        secs(full),
                    ));
                }
            }
            Some(each)
        },
    },
    Family {
        name: "agent_guard_watchdog_missed",
        kind: Kind::Gauge,
        help: "1 while the agent's --watchdog deadline is missed.",
        samples: |s| single(flag(s.watchdog_missed)),
    },
    Family {
        name: "agent_guard_subscribers",
        kind: Kind::Gauge,
        help: "Connections subscribed to drain announcements.",
        samples: |s| single(s.subscribers as f64),
    },
    Family {
        name: "agent_guard_agent_in_flight",
        kind: Kind::Gauge,
        help: "Work in flight, as the agent last reported it.",
        samples: |s| single(s.report.in_flight?.0 as f64),
    },
    Family {
        name: "agent_guard_protected_from_scale_in",
        kind: Kind::Gauge,
        help: "1 while the instance is protected from scale-in (--protect-while-busy).",
        samples: |s| single(flag(s.lifecycle.protected?)),
    },
    Family {
        name: "agent_guard_lifecycle_calls_total",
        kind: Kind::Counter,
        help: "Auto Scaling API calls, by action and outcome.",
        samples: |s| {
            let each = s.lifecycle.calls.iter().map(|((action, outcome), n)| {
                Sample::new([("action", *action), ("outcome", *outcome)], *n as f64)
            });
            Some(each.collect())
        },
    },
    Family {
        name: "agent_guard_lifecycle_heartbeats_total",
        kind: Kind::Counter,
        help: "Lifecycle heartbeats sent.",
        // Only the termination hook heartbeats: the launch hook completes once the agent is ready.
        samples: |s| {
            let sent =
                |h: &HookStatus| Sample::new([("hook", h.name.as_str())], h.heartbeats as f64);
            Some(s.lifecycle.terminate.iter().map(sent).collect())
        },
    },
    Family {
        name: "agent_guard_lifecycle_completed",
        kind: Kind::Gauge,
        help: "1 once a hook was completed, by hook and result.",
        samples: |s| {
            let hooks = [&s.lifecycle.terminate, &s.lifecycle.launch]
                .into_iter()
                .flatten();
            let completed = hooks.filter_map(|h| match (h.result, h.state) {
                (Some(result), HookState::Completed) => Some((&h.name, result)),
                _ => None,
            });
            let each = completed.map(|(hook, result)| {
                Sample::new([("hook", hook.as_str()), ("result", result.as_str())], 1.0)
            });
            Some(each.collect())
        },
    },
    Family {
        name: "agent_guard_lifecycle_waiting_seconds",
        kind: Kind::Gauge,
        help: "While the termination hook's work waits (for the instance's wait state, or for other guards on this host): how long, by what it waits for.",
        // Only while it waits: the family says "waiting", and its absence "not waiting".
        samples: |s| {
            let awaiting = s.lifecycle.awaiting.as_ref()?;
            let waited = s.wall.duration_since(awaiting.since).unwrap_or_default();
            let each = Awaiting::ALL.map(|a| {
                let secs = if a == awaiting.what {
                    waited.as_secs_f64()
                } else {
                    0.0
                };
                Sample::new([("for", a.as_str())], secs)
            });
            Some(each.into())
        },
    },
    Family {
        name: "agent_guard_target_group_state",
        kind: Kind::Gauge,
        help: "This instance's state in each of its target groups, as the guard last read it (at set-up and while a drain waits): 1 for the current one.",
        // Only with the load-balancer step on: a guard that stops no load balancer has none.
        samples: |s| {
            let lb = s.load_balancer.active.then_some(&s.load_balancer)?;
            let each = lb.target_groups.iter().flat_map(|g| {
                TargetState::ALL.map(|state| {
                    Sample::new(
                        [("target_group", g.arn.as_str()), ("state", state.as_str())],
                        flag(state == g.state),
                    )
                })
            });
            Some(each.collect())
        },
    },
    Family {
        name: "agent_guard_deregistration_start_time_seconds",
        kind: Kind::Gauge,
        help: "When the last deregistration from the target groups began, in seconds since the Unix epoch.",
        samples: |s| single(unix(s.load_balancer.deregistration.as_ref()?.started)),
    },
    Family {
        name: "agent_guard_deregistration_end_time_seconds",
        kind: Kind::Gauge,
        help: "When the last deregistration ended (the load balancer let go, or the wait was cut) and the agent could be told (after a crash loop: no agent), in seconds since the Unix epoch.",
        samples: |s| single(unix(s.load_balancer.deregistration.as_ref()?.ended?.0)),
    },
    Family {
        name: "agent_guard_deregistration_duration_seconds",
        kind: Kind::Gauge,
        help: "How long the load balancer took to stop sending in the last deregistration, by how it ended (done, cut, refused, failed).",
        samples: |s| {
            let run = s.load_balancer.deregistration.as_ref()?;
            let ((_, end), took) = (run.ended?, run.took?);
            Some(vec![Sample::new(
                [("outcome", end.as_str())],
                took.as_secs_f64(),
            )])
        },
    },
    Family {
        name: "agent_guard_uptime_seconds",
        kind: Kind::Gauge,
        help: "How long the guard has run.",
        samples: |s| single(s.uptime.as_secs_f64()),
    },
];

/// Seconds since the Unix epoch (0 for a time before it).
fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A label value in Prometheus text: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    use tokio::sync::watch;

    use crate::aws::notices::{NoticeKind, NoticeRecord};
    use crate::aws::scheduled::{Handling, ScheduledEvent, Tracked};
    use crate::config::HookResult;
    use crate::config::check::Check;
    use crate::health::checks::{CheckResult, Snapshot};

    use super::*;

    /// A views with something in every family: drains, notices, checks (one unchecked), work in
    /// flight, protection, calls, and two completed hooks (one name needing escapes).
    fn busy_hub() -> Views {
        let now = Instant::now();
        let phase = Phase::Draining(crate::machine::state::Drain {
            told: true,
            reason: DrainReason::Operator,
            deadline: now + Duration::from_secs(60),
            hard_deadline: None,
            signalled: false,
        });
        let notice = |kind| NoticeRecord {
            kind,
            value: "x".into(),
            seen_at: SystemTime::now(),
            drain: None,
        };
        // Only a listed, active event counts: one system-reboot.
        let scheduled = |state, listed| Tracked {
            event: ScheduledEvent {
                id: "instance-event-1".into(),
                code: EventCode::SystemReboot,
                code_text: "system-reboot".into(),
                state,
                not_before: SystemTime::now(),
                not_after: None,
                description: String::new(),
            },
            handling: Handling::Reported,
            listed,
        };
        let mut imds = ImdsStatus {
            errors_total: 7,
            scheduled_events: vec![
                scheduled(EventState::Active, true),
                scheduled(EventState::Canceled, true),
                scheduled(EventState::Active, false),
            ],
            ..ImdsStatus::default()
        };
        for kind in [NoticeKind::Spot, NoticeKind::Rebalance, NoticeKind::Spot] {
            imds.record_notice(notice(kind));
        }
        let db = Check::parse_named("db=tcp://127.0.0.1:1").expect("valid");
        let web = Check::parse_named("web=http://127.0.0.1:1/").expect("valid");
        let result = CheckResult {
            shown: db.shown.clone(),
            component_type: "datastore",
            outcome: Ok(()),
            latency: Duration::from_micros(1500),
            at: now,
            at_wall: SystemTime::now(),
        };
        let checks = Snapshot {
            interval: Duration::from_secs(3600),
            checks: vec![(db, Some(result)), (web, None)],
        };
        let mut views = Views::fixed("agent", watch::channel(phase).1);
        views.watchdog = Some(Duration::from_millis(1));
        views.imds = watch::channel(imds).1;
        views.checks = watch::channel(checks).1;
        views.report = watch::channel(AgentReport {
            watchdog_triggered: true,
            in_flight: Some((3, SystemTime::now())),
            ..AgentReport::default()
        })
        .1;
        let mut stats = RunStats {
            agent_pid: Some(42),
            agent_started: Some(Instant::now()),
            ..RunStats::default()
        };
        stats.drains = BTreeMap::from([(DrainReason::Operator, 1), (DrainReason::ScaleIn, 2)]);
        stats.agent_exit = Some(143);
        stats.runs.exits = 3;
        stats.runs.restarts = 2;
        views.run = watch::channel(stats).1;
        {
            let mut l = LifecycleStatus {
                protected: Some(true),
                ..LifecycleStatus::default()
            };
            l.calls.insert(("complete", "ok"), 1);
            l.calls.insert(("heartbeat", "error"), 2);
            l.terminate = Some(HookStatus {
                name: "term\"hook".into(),
                state: HookState::Completed,
                heartbeats: 4,
                result: Some(HookResult::Continue),
                last_error: None,
            });
            l.launch = Some(HookStatus {
                name: "launch".into(),
                state: HookState::Completed,
                heartbeats: 0,
                result: Some(HookResult::Abandon),
                last_error: None,
            });
            views.lifecycle = watch::channel(l).1;
        }
        views
    }

    /// The text without the uptime sample, the one value that moves by itself.
    fn steady(text: &str) -> String {
        text.lines()
            .filter(|l| !l.starts_with("agent_guard_uptime_seconds "))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// The text as `server.rs` wrote it before the table (its uptime line aside), byte for byte.
    const BUSY: &str = r#"# HELP agent_guard_phase The supervisor's phase: 1 for the current one.
# TYPE agent_guard_phase gauge
agent_guard_phase{phase="starting"} 0
agent_guard_phase{phase="ready"} 0
agent_guard_phase{phase="draining"} 1
agent_guard_phase{phase="stopping"} 0
agent_guard_phase{phase="exited"} 0
# HELP agent_guard_drains_total Drains started, by reason.
# TYPE agent_guard_drains_total counter
agent_guard_drains_total{reason="scale-in"} 2
agent_guard_drains_total{reason="spot-interruption"} 0
agent_guard_drains_total{reason="rebalance"} 0
agent_guard_drains_total{reason="signal"} 0
agent_guard_drains_total{reason="operator"} 1
agent_guard_drains_total{reason="warm-pool"} 0
agent_guard_drains_total{reason="maintenance"} 0
# HELP agent_guard_notices_total IMDS notices seen, by kind.
# TYPE agent_guard_notices_total counter
agent_guard_notices_total{kind="target-lifecycle-state"} 0
agent_guard_notices_total{kind="spot-interruption"} 2
agent_guard_notices_total{kind="rebalance-recommendation"} 1
agent_guard_notices_total{kind="scheduled-event"} 0
# HELP agent_guard_maintenance_events EC2 scheduled events listed as active, by code.
# TYPE agent_guard_maintenance_events gauge
agent_guard_maintenance_events{code="instance-reboot"} 0
agent_guard_maintenance_events{code="system-reboot"} 1
agent_guard_maintenance_events{code="system-maintenance"} 0
agent_guard_maintenance_events{code="instance-retirement"} 0
agent_guard_maintenance_events{code="instance-stop"} 0
agent_guard_maintenance_events{code="other"} 0
# HELP agent_guard_imds_errors_total Failed IMDS reads.
# TYPE agent_guard_imds_errors_total counter
agent_guard_imds_errors_total 7
# HELP agent_guard_log_lines_dropped_total The guard's log lines dropped because stderr was not read fast enough.
# TYPE agent_guard_log_lines_dropped_total counter
agent_guard_log_lines_dropped_total 0
# HELP agent_guard_check_up Whether a check passes (1) or fails (0); stale results fail.
# TYPE agent_guard_check_up gauge
agent_guard_check_up{check="db"} 1
agent_guard_check_up{check="web"} 0
# HELP agent_guard_check_latency_seconds How long the last probe of a check took.
# TYPE agent_guard_check_latency_seconds gauge
agent_guard_check_latency_seconds{check="db"} 0.0015
# HELP agent_guard_agent_up 1 while the agent runs.
# TYPE agent_guard_agent_up gauge
agent_guard_agent_up 1
# HELP agent_guard_agent_exits_total Times the agent exited.
# TYPE agent_guard_agent_exits_total counter
agent_guard_agent_exits_total 3
# HELP agent_guard_agent_restarts_total Times the agent was started again (--restart).
# TYPE agent_guard_agent_restarts_total counter
agent_guard_agent_restarts_total 2
# HELP agent_guard_watchdog_missed 1 while the agent's --watchdog deadline is missed.
# TYPE agent_guard_watchdog_missed gauge
agent_guard_watchdog_missed 1
# HELP agent_guard_subscribers Connections subscribed to drain announcements.
# TYPE agent_guard_subscribers gauge
agent_guard_subscribers 0
# HELP agent_guard_agent_in_flight Work in flight, as the agent last reported it.
# TYPE agent_guard_agent_in_flight gauge
agent_guard_agent_in_flight 3
# HELP agent_guard_protected_from_scale_in 1 while the instance is protected from scale-in (--protect-while-busy).
# TYPE agent_guard_protected_from_scale_in gauge
agent_guard_protected_from_scale_in 1
# HELP agent_guard_lifecycle_calls_total Auto Scaling API calls, by action and outcome.
# TYPE agent_guard_lifecycle_calls_total counter
agent_guard_lifecycle_calls_total{action="complete",outcome="ok"} 1
agent_guard_lifecycle_calls_total{action="heartbeat",outcome="error"} 2
# HELP agent_guard_lifecycle_heartbeats_total Lifecycle heartbeats sent.
# TYPE agent_guard_lifecycle_heartbeats_total counter
agent_guard_lifecycle_heartbeats_total{hook="term\"hook"} 4
# HELP agent_guard_lifecycle_completed 1 once a hook was completed, by hook and result.
# TYPE agent_guard_lifecycle_completed gauge
agent_guard_lifecycle_completed{hook="term\"hook",result="CONTINUE"} 1
agent_guard_lifecycle_completed{hook="launch",result="ABANDON"} 1
# HELP agent_guard_uptime_seconds How long the guard has run.
# TYPE agent_guard_uptime_seconds gauge
"#;

    /// Families with nothing to report: headers only, and the optional ones left out.
    const IDLE: &str = r#"# HELP agent_guard_phase The supervisor's phase: 1 for the current one.
# TYPE agent_guard_phase gauge
agent_guard_phase{phase="starting"} 0
agent_guard_phase{phase="ready"} 1
agent_guard_phase{phase="draining"} 0
agent_guard_phase{phase="stopping"} 0
agent_guard_phase{phase="exited"} 0
# HELP agent_guard_drains_total Drains started, by reason.
# TYPE agent_guard_drains_total counter
agent_guard_drains_total{reason="scale-in"} 0
agent_guard_drains_total{reason="spot-interruption"} 0
agent_guard_drains_total{reason="rebalance"} 0
agent_guard_drains_total{reason="signal"} 0
agent_guard_drains_total{reason="operator"} 0
agent_guard_drains_total{reason="warm-pool"} 0
agent_guard_drains_total{reason="maintenance"} 0
# HELP agent_guard_notices_total IMDS notices seen, by kind.
# TYPE agent_guard_notices_total counter
agent_guard_notices_total{kind="target-lifecycle-state"} 0
agent_guard_notices_total{kind="spot-interruption"} 0
agent_guard_notices_total{kind="rebalance-recommendation"} 0
agent_guard_notices_total{kind="scheduled-event"} 0
# HELP agent_guard_maintenance_events EC2 scheduled events listed as active, by code.
# TYPE agent_guard_maintenance_events gauge
agent_guard_maintenance_events{code="instance-reboot"} 0
agent_guard_maintenance_events{code="system-reboot"} 0
agent_guard_maintenance_events{code="system-maintenance"} 0
agent_guard_maintenance_events{code="instance-retirement"} 0
agent_guard_maintenance_events{code="instance-stop"} 0
agent_guard_maintenance_events{code="other"} 0
# HELP agent_guard_imds_errors_total Failed IMDS reads.
# TYPE agent_guard_imds_errors_total counter
agent_guard_imds_errors_total 0
# HELP agent_guard_log_lines_dropped_total The guard's log lines dropped because stderr was not read fast enough.
# TYPE agent_guard_log_lines_dropped_total counter
agent_guard_log_lines_dropped_total 0
# HELP agent_guard_check_up Whether a check passes (1) or fails (0); stale results fail.
# TYPE agent_guard_check_up gauge
# HELP agent_guard_check_latency_seconds How long the last probe of a check took.
# TYPE agent_guard_check_latency_seconds gauge
# HELP agent_guard_agent_up 1 while the agent runs.
# TYPE agent_guard_agent_up gauge
agent_guard_agent_up 1
# HELP agent_guard_agent_exits_total Times the agent exited.
# TYPE agent_guard_agent_exits_total counter
agent_guard_agent_exits_total 0
# HELP agent_guard_agent_restarts_total Times the agent was started again (--restart).
# TYPE agent_guard_agent_restarts_total counter
agent_guard_agent_restarts_total 0
# HELP agent_guard_watchdog_missed 1 while the agent's --watchdog deadline is missed.
# TYPE agent_guard_watchdog_missed gauge
agent_guard_watchdog_missed 0
# HELP agent_guard_subscribers Connections subscribed to drain announcements.
# TYPE agent_guard_subscribers gauge
agent_guard_subscribers 0
# HELP agent_guard_lifecycle_calls_total Auto Scaling API calls, by action and outcome.
# TYPE agent_guard_lifecycle_calls_total counter
# HELP agent_guard_lifecycle_heartbeats_total Lifecycle heartbeats sent.
# TYPE agent_guard_lifecycle_heartbeats_total counter
# HELP agent_guard_lifecycle_completed 1 once a hook was completed, by hook and result.
# TYPE agent_guard_lifecycle_completed gauge
# HELP agent_guard_uptime_seconds How long the guard has run.
# TYPE agent_guard_uptime_seconds gauge
"#;

    #[test]
    fn every_family_reads_as_before() {
        let text = render(&busy_hub());
        assert_eq!(steady(&text), BUSY);
        assert!(
            text.lines()
                .any(|l| l.starts_with("agent_guard_uptime_seconds "))
        );
    }

    #[test]
    fn an_idle_guard_reads_as_before() {
        let views = Views::fixed("agent", watch::channel(Phase::Ready).1);
        assert_eq!(steady(&render(&views)), IDLE);
    }

    #[test]
    fn the_target_groups_and_the_last_deregistration_are_shown() {
        use crate::model::load_balancer::{
            DeregisteredFor, DeregistrationEnd, DeregistrationRun, TargetGroupState,
        };
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let mut views = Views::fixed("agent", watch::channel(Phase::Ready).1);
        views.load_balancer = watch::channel(LoadBalancerStatus {
            active: true,
            target_groups: vec![TargetGroupState {
                arn: "arn:tg/web".into(),
                state: TargetState::Unused,
                seen: at(1_800_000_010),
                delay: Duration::from_secs(5),
            }],
            deregistration: Some(DeregistrationRun {
                reason: DeregisteredFor::Drain(DrainReason::SpotInterruption),
                started: at(1_800_000_000),
                ended: Some((at(1_800_000_005), DeregistrationEnd::Done)),
                took: Some(Duration::from_millis(5200)),
                registered_again: None,
            }),
        })
        .1;
        let text = render(&views);
        for line in [
            "agent_guard_target_group_state{target_group=\"arn:tg/web\",state=\"unused\"} 1",
            "agent_guard_target_group_state{target_group=\"arn:tg/web\",state=\"draining\"} 0",
            "agent_guard_deregistration_start_time_seconds 1800000000",
            "agent_guard_deregistration_end_time_seconds 1800000005",
            "agent_guard_deregistration_duration_seconds{outcome=\"done\"} 5.2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let off = render(&Views::fixed("agent", watch::channel(Phase::Ready).1));
        assert!(
            !off.contains("target_group"),
            "nothing when the step is off"
        );
        assert!(
            !off.contains("deregistration"),
            "nothing before a deregistration"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
