//! The whole state as the control socket's `status` reply and the body of `/status`, read from
//! every snapshot at one moment.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::aws::notices::ImdsStatus;
use crate::fmt::rfc3339;
use crate::health::views::Views;
use crate::machine::state::{Cleanup, Phase, Restart};
use crate::model::hooks::HookStatus;
use crate::model::lifecycle::LifecycleStatus;
use crate::model::load_balancer::LoadBalancerStatus;
use crate::model::run::{AgentRuns, DrainCommandStatus};
use crate::model::status::{
    CgroupFigures, CgroupView, CheckStatus, CommandState, DeregistrationView, DrainCommandView,
    DrainStatus, HookView, ImdsView, LifecycleView, LoadBalancerView, NoticeView, PressureView,
    PressureViews, ProcessGroupView, RestartView, ScheduledEventView, Status, TargetGroupView,
    TrackedBy, WaitingView,
};
use crate::process::cgroup::Tracking;

/// The whole state now: the control socket's `status` reply and the body of `/status`.
pub fn status(views: &Views) -> Status {
    let phase = views.phase.borrow().clone();
    let report = views.report.borrow().clone();
    let stats = views.run.borrow().clone();
    let now = Instant::now();
    let imds = views.imds.borrow().clone();
    let checks = views.checks.borrow().verdicts(now);
    Status {
        ok: true,
        name: views.name.clone(),
        phase: phase.name(),
        phase_since: rfc3339(stats.phase_since),
        agent_pid: stats.agent_pid,
        agent_uptime_s: stats.agent_uptime().map(|d| d.as_secs()),
        agent_exit: stats.agent_exit,
        uptime_s: views.uptime().as_secs(),
        held: views.held(),
        ready_source: report
            .ready_source
            .or(stats.ready_source)
            .map(str::to_string),
        status: report.status,
        stopping: report.stopping,
        in_flight: report.in_flight.map(|(n, _)| n),
        in_flight_reported: report.in_flight.map(|(_, at)| rfc3339(at)),
        drain: stats
            .drain
            .as_ref()
            .filter(|_| phase.agent_running())
            .map(|d| DrainStatus {
                reason: d.reason,
                deadline: rfc3339(d.deadline),
                deadline_in_ms: millis(d.deadline_at.saturating_duration_since(now)),
            }),
        drains: stats
            .drains
            .iter()
            .map(|(r, n)| (r.as_str().to_string(), *n))
            .collect::<BTreeMap<_, _>>(),
        restart: restart(&phase, &stats.runs, now),
        cgroup: cgroup(&views.tracking),
        on_drain: stats.runs.drain_command.as_ref().map(drain_command),
        watchdog_missed: views.watchdog_missed(now),
        subscribers: views.subscribers(),
        health_listen: views.health_addr.map(|a| a.to_string()),
        imds: (!imds.endpoint.is_empty()).then(|| imds_view(&imds)),
        lifecycle: lifecycle(&views.lifecycle.borrow()),
        load_balancer: load_balancer(&views.load_balancer.borrow()),
        checks: checks
            .into_iter()
            .map(|v| CheckStatus {
                target: v.result.as_ref().map(|r| r.shown.clone()),
                latency_ms: v.result.as_ref().map(|r| r.latency.as_secs_f64() * 1000.0),
                checked: v.result.as_ref().map(|r| rfc3339(r.at_wall)),
                name: v.name,
                ok: v.ok,
                why: v.why,
            })
            .collect(),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `--restart`: the policy, the restarts so far, and while one is pending its attempt and when.
fn restart(phase: &Phase, runs: &AgentRuns, now: Instant) -> RestartView {
    let pending = match phase {
        Phase::Restarting(r) => Some(r),
        _ => None,
    };
    RestartView {
        policy: runs.policy,
        restarts: runs.restarts,
        restarting: pending.is_some(),
        attempt: pending.map(|r| r.attempt),
        // At the latest: the next start also waits out the old agent's leftovers' grace.
        next_in_ms: pending.map(|r| millis(next_start(r).saturating_duration_since(now))),
        waiting_for_leftovers: pending.map(|r| r.cleanup.is_some()),
        crash_loop: runs.crash_loop,
    }
}

/// The latest the next start waits for: its delay, and the grace (or the kernel's removal) of
/// what is left of the last agent's group, whichever ends later.
fn next_start(r: &Restart) -> Instant {
    match r.cleanup {
        Some(Cleanup::Signalled { kill_at }) => r.at.max(kill_at),
        Some(Cleanup::Killed { give_up_at }) => r.at.max(give_up_at),
        None => r.at,
    }
}

/// `--cgroup`: what stands for the agent's processes, and, with a cgroup, their resources now.
fn cgroup(tracking: &Tracking) -> CgroupView {
    let Some(cgroup) = &tracking.cgroup else {
        return CgroupView::ProcessGroup(ProcessGroupView {
            mode: tracking.mode.to_string(),
            tracked_by: TrackedBy::ProcessGroup,
            why: tracking.fallback.clone(),
        });
    };
    let usage = cgroup.usage();
    let mut pressure = PressureViews::default();
    for (resource, p) in &usage.pressure {
        let view = Some(PressureView {
            full_avg10: p.full_avg10,
            some_avg10: p.some_avg10,
        });
        match *resource {
            "cpu" => pressure.cpu = view,
            "io" => pressure.io = view,
            "memory" => pressure.memory = view,
            _ => {}
        }
    }
    CgroupView::Cgroup(CgroupFigures {
        controllers: cgroup.controllers().to_vec(),
        cpu_usage_s: usage.cpu_usage_usec.map(|u| u as f64 / 1e6),
        memory_current: usage.memory_current,
        memory_max: cgroup.memory_max(),
        memory_peak: usage.memory_peak,
        mode: tracking.mode.to_string(),
        oom_kills: usage.oom_kills,
        path: cgroup.path().display().to_string(),
        populated: cgroup.populated(),
        pressure,
        processes: usage.processes,
        tracked_by: TrackedBy::Cgroup,
    })
}

fn drain_command(c: &DrainCommandStatus) -> DrainCommandView {
    let state = match (c.status, c.killed) {
        (None, false) => CommandState::Running,
        (_, true) => CommandState::Killed,
        (Some(_), false) => CommandState::Exited,
    };
    DrainCommandView {
        pid: c.pid,
        started: rfc3339(c.started),
        state,
        status: c.status,
    }
}

/// What the guard knows of IMDS, for `/status`.
fn imds_view(imds: &ImdsStatus) -> ImdsView {
    ImdsView {
        endpoint: imds.endpoint.clone(),
        instance_id: imds.instance_id.clone(),
        region: imds.region.clone(),
        lifecycle_state: imds.lifecycle_state.clone(),
        last_poll: imds.last_poll.map(rfc3339),
        last_ok: imds.last_ok.map(rfc3339),
        errors: imds.errors_total,
        last_error: imds.last_error.clone(),
        notices: imds
            .notices
            .iter()
            .map(|n| NoticeView {
                kind: n.kind,
                value: n.value.clone(),
                seen: rfc3339(n.seen_at),
                drain: n.drain,
            })
            .collect(),
        scheduled_events: imds
            .scheduled_events
            .iter()
            .map(|t| ScheduledEventView {
                id: t.event.id.clone(),
                code: t.event.code_text.clone(),
                state: t.event.state.as_str().to_string(),
                not_before: rfc3339(t.event.not_before),
                not_after: t.event.not_after.map(rfc3339),
                listed: t.listed,
                handling: t.handling.as_str().to_string(),
                drain_at: t.handling.drain_at().map(rfc3339),
            })
            .collect(),
    }
}

/// The lifecycle work, or nothing when it has nothing to show.
fn lifecycle(l: &LifecycleStatus) -> Option<LifecycleView> {
    let hook = |h: &Option<HookStatus>| {
        h.as_ref().map(|h| HookView {
            name: h.name.clone(),
            state: h.state,
            heartbeats: h.heartbeats,
            result: h.result,
            last_error: h.last_error.clone(),
        })
    };
    if l.terminate.is_none() && l.launch.is_none() && l.protected.is_none() && l.group.is_none() {
        return None;
    }
    Some(LifecycleView {
        group: l.group.clone(),
        instance_id: l.instance_id.clone(),
        heartbeat_interval_s: l.heartbeat_interval.map(|d| d.as_secs_f64()),
        terminate_hook: hook(&l.terminate),
        launch_hook: hook(&l.launch),
        error: l.error.clone(),
        protected_from_scale_in: l.protected,
        waiting_for: l.awaiting.as_ref().map(|a| WaitingView {
            what: a.what,
            since: rfc3339(a.since),
            detail: a.detail.clone(),
            text: a.text(),
        }),
    })
}

/// The load-balancer step, when it is on.
fn load_balancer(lb: &LoadBalancerStatus) -> Option<LoadBalancerView> {
    if !lb.active {
        return None;
    }
    Some(LoadBalancerView {
        target_groups: lb
            .target_groups
            .iter()
            .map(|g| TargetGroupView {
                arn: g.arn.clone(),
                deregistration_delay_s: g.delay.as_secs(),
                seen: rfc3339(g.seen),
                state: g.state,
            })
            .collect(),
        deregistration: lb.deregistration.as_ref().map(|d| DeregistrationView {
            reason: d.reason,
            started: rfc3339(d.started),
            ended: d.ended.map(|(at, _)| rfc3339(at)),
            outcome: d.ended.map(|(_, end)| end),
            took_ms: d.took.map(millis),
            registered_again: d.registered_again.map(rfc3339),
        }),
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use tokio::sync::watch;

    use crate::aws::notices::NoticeRecord;
    use crate::aws::scheduled::{EventCode, EventState, Handling, ScheduledEvent, Tracked};
    use crate::config::check::Check;
    use crate::health::checks::{CheckResult, Snapshot};
    use crate::journal::NoticeKind;
    use crate::machine::state::Drain;
    use crate::model::hooks::HookState;
    use crate::model::lifecycle::AwaitingStatus;
    use crate::model::load_balancer::{
        DeregisteredFor, DeregistrationEnd, DeregistrationRun, TargetGroupState, TargetState,
    };
    use crate::model::report::AgentReport;
    use crate::model::run::{DrainInfo, RunStats};
    use crate::model::{Awaiting, DrainReason, HookResult};

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000 + secs)
    }

    /// Views with something in every field of the status.
    fn busy() -> Views {
        let now = Instant::now();
        let phase = Phase::Draining(Drain {
            reason: DrainReason::ScaleIn,
            deadline: now + Duration::from_secs(60),
            hard_deadline: None,
            signalled: false,
            told: true,
        });
        let mut views = Views::fixed("agent", watch::channel(phase).1);
        views.health_addr = Some("127.0.0.1:8099".parse().expect("an address"));
        let mut run = RunStats {
            phase_since: at(1),
            agent_pid: Some(42),
            agent_started: Some(now),
            agent_exit: None,
            ready_source: Some("start"),
            drain: Some(DrainInfo {
                reason: DrainReason::ScaleIn,
                deadline: at(61),
                deadline_at: now + Duration::from_secs(60),
            }),
            ..RunStats::default()
        };
        run.drains = BTreeMap::from([(DrainReason::Operator, 1), (DrainReason::ScaleIn, 2)]);
        run.runs.restarts = 2;
        run.runs.drain_command = Some(DrainCommandStatus {
            pid: 43,
            started: at(2),
            status: Some(0),
            killed: false,
        });
        views.run = watch::channel(run).1;
        views.report = watch::channel(AgentReport {
            status: Some("working".into()),
            stopping: true,
            in_flight: Some((3, at(3))),
            ..AgentReport::default()
        })
        .1;
        let mut imds = ImdsStatus {
            endpoint: "http://169.254.169.254".into(),
            instance_id: Some("i-1".into()),
            region: Some("eu-west-1".into()),
            lifecycle_state: Some("Terminated".into()),
            last_poll: Some(at(4)),
            last_ok: Some(at(4)),
            errors_total: 7,
            last_error: Some("timed out".into()),
            scheduled_events: vec![Tracked {
                event: ScheduledEvent {
                    id: "instance-event-1".into(),
                    code: EventCode::SystemReboot,
                    code_text: "system-reboot".into(),
                    state: EventState::Active,
                    not_before: at(5),
                    not_after: None,
                    description: String::new(),
                },
                handling: Handling::DrainAt(at(6)),
                listed: true,
            }],
            ..ImdsStatus::default()
        };
        imds.record_notice(NoticeRecord {
            kind: NoticeKind::LifecycleState,
            value: "Terminated".into(),
            seen_at: at(7),
            drain: Some(DrainReason::ScaleIn),
        });
        views.imds = watch::channel(imds).1;
        let db = Check::parse_named("db=tcp://127.0.0.1:1").expect("valid");
        let web = Check::parse_named("web=http://127.0.0.1:1/").expect("valid");
        let result = CheckResult {
            shown: db.shown.clone(),
            component_type: "datastore",
            outcome: Ok(()),
            latency: Duration::from_micros(1500),
            at: now,
            at_wall: at(8),
        };
        views.checks = watch::channel(Snapshot {
            interval: Duration::from_secs(3600),
            checks: vec![(db, Some(result)), (web, None)],
        })
        .1;
        let hook = |name: &str, state, result| HookStatus {
            name: name.into(),
            state,
            heartbeats: 4,
            result,
            last_error: Some("throttled".into()),
        };
        views.lifecycle = watch::channel(LifecycleStatus {
            group: Some("workers".into()),
            instance_id: Some("i-1".into()),
            heartbeat_interval: Some(Duration::from_millis(300)),
            terminate: Some(hook("term", HookState::Awaiting, None)),
            launch: Some(hook(
                "launch",
                HookState::Completed,
                Some(HookResult::Continue),
            )),
            error: None,
            protected: Some(true),
            awaiting: Some(AwaitingStatus {
                what: Awaiting::WaitState,
                since: at(9),
                detail: "deregistration in progress (Terminating)".into(),
            }),
            ..LifecycleStatus::default()
        })
        .1;
        views.load_balancer = watch::channel(LoadBalancerStatus {
            active: true,
            target_groups: vec![TargetGroupState {
                arn: "arn:tg/web".into(),
                state: TargetState::Draining,
                seen: at(10),
                delay: Duration::from_secs(300),
            }],
            deregistration: Some(DeregistrationRun {
                reason: DeregisteredFor::Drain(DrainReason::SpotInterruption),
                started: at(10),
                ended: Some((at(15), DeregistrationEnd::Cut)),
                took: Some(Duration::from_millis(5001)),
                registered_again: None,
            }),
        })
        .1;
        views
    }

    /// The numbers that move with the clock, masked.
    fn masked(json: &str) -> String {
        let mut out = json.to_string();
        for key in ["deadline_in_ms", "agent_uptime_s", "uptime_s"] {
            let pattern = format!("\"{key}\":");
            let mut from = 0;
            while let Some(i) = out[from..].find(&pattern) {
                let start = from + i + pattern.len();
                let end = start
                    + out[start..]
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(0);
                if end > start {
                    out.replace_range(start..end, "N");
                }
                from = start;
            }
        }
        out
    }

    /// The JSON users see, field for field (README documents it), as the `json!` builder of
    /// `agent::hub` wrote it before the typed `Status`.
    const GOLDEN: &str = r#"{"agent_exit":null,"agent_pid":42,"agent_uptime_s":N,"checks":[{"checked":"2026-05-28T20:26:48.000Z","latency_ms":1.5,"name":"db","ok":true,"target":"tcp://127.0.0.1:1","why":"ok"},{"checked":null,"latency_ms":null,"name":"web","ok":false,"target":null,"why":"not checked yet"}],"cgroup":{"mode":"","tracked_by":"process-group","why":null},"drain":{"deadline":"2026-05-28T20:27:41.000Z","deadline_in_ms":N,"reason":"scale-in"},"drains":{"operator":1,"scale-in":2},"health_listen":"127.0.0.1:8099","held":null,"imds":{"endpoint":"http://169.254.169.254","errors":7,"instance_id":"i-1","last_error":"timed out","last_ok":"2026-05-28T20:26:44.000Z","last_poll":"2026-05-28T20:26:44.000Z","lifecycle_state":"Terminated","notices":[{"drain":"scale-in","kind":"target-lifecycle-state","seen":"2026-05-28T20:26:47.000Z","value":"Terminated"}],"region":"eu-west-1","scheduled_events":[{"code":"system-reboot","drain_at":"2026-05-28T20:26:46.000Z","handling":"drain-scheduled","id":"instance-event-1","listed":true,"not_after":null,"not_before":"2026-05-28T20:26:45.000Z","state":"active"}]},"in_flight":3,"in_flight_reported":"2026-05-28T20:26:43.000Z","lifecycle":{"error":null,"group":"workers","heartbeat_interval_s":0.3,"instance_id":"i-1","launch_hook":{"heartbeats":4,"last_error":"throttled","name":"launch","result":"CONTINUE","state":"completed"},"protected_from_scale_in":true,"terminate_hook":{"heartbeats":4,"last_error":"throttled","name":"term","result":null,"state":"awaiting"},"waiting_for":{"detail":"deregistration in progress (Terminating)","since":"2026-05-28T20:26:49.000Z","text":"waiting for Terminating:Wait since 20:26:49, deregistration in progress (Terminating)","what":"wait-state"}},"load_balancer":{"deregistration":{"ended":"2026-05-28T20:26:55.000Z","outcome":"cut","reason":"spot-interruption","registered_again":null,"started":"2026-05-28T20:26:50.000Z","took_ms":5001},"target_groups":[{"arn":"arn:tg/web","deregistration_delay_s":300,"seen":"2026-05-28T20:26:50.000Z","state":"draining"}]},"name":"agent","ok":true,"on_drain":{"pid":43,"started":"2026-05-28T20:26:42.000Z","state":"exited","status":0},"phase":"draining","phase_since":"2026-05-28T20:26:41.000Z","ready_source":"start","restart":{"attempt":null,"crash_loop":false,"next_in_ms":null,"policy":"never","restarting":false,"restarts":2,"waiting_for_leftovers":null},"status":"working","stopping":true,"subscribers":0,"uptime_s":N,"watchdog_missed":false}"#;

    /// A guard with nothing to show: no IMDS, no lifecycle, no checks.
    const IDLE: &str = r#"{"agent_exit":null,"agent_pid":null,"agent_uptime_s":null,"checks":[],"cgroup":{"mode":"","tracked_by":"process-group","why":null},"drain":null,"drains":{},"health_listen":null,"held":null,"imds":null,"in_flight":null,"in_flight_reported":null,"lifecycle":null,"load_balancer":null,"name":"agent","ok":true,"on_drain":null,"phase":"ready","phase_since":"2026-05-28T20:26:41.000Z","ready_source":null,"restart":{"attempt":null,"crash_loop":false,"next_in_ms":null,"policy":"never","restarting":false,"restarts":0,"waiting_for_leftovers":null},"status":null,"stopping":false,"subscribers":0,"uptime_s":N,"watchdog_missed":false}"#;

    /// What the guard writes, `ctl` and the drill read back as the same value.
    #[test]
    fn the_status_round_trips() {
        let sent = status(&busy());
        let read: Status = serde_json::from_str(&sent.json()).expect("a status");
        assert_eq!(read, sent);
        let value: serde_json::Value = serde_json::from_str(&sent.json()).expect("JSON");
        let again: Status = serde_json::from_value(value).expect("a status from a Value");
        assert_eq!(again, sent);
    }

    #[test]
    fn the_status_reads_as_before() {
        let text = status(&busy()).json();
        assert_eq!(masked(&text), GOLDEN, "\n{}", masked(&text));
        let mut idle = Views::fixed("agent", watch::channel(Phase::Ready).1);
        idle.run = watch::channel(RunStats {
            phase_since: at(1),
            ..RunStats::default()
        })
        .1;
        let text = status(&idle).json();
        assert_eq!(masked(&text), IDLE, "\n{}", masked(&text));
    }

    #[test]
    fn the_next_start_waits_for_the_leftovers_grace() {
        use crate::machine::state::{Cleanup, Restart};
        use crate::process::exit::ChildExit;
        let now = Instant::now();
        let s = Duration::from_secs(1);
        let restart = |cleanup| Restart {
            last: ChildExit::for_test(1),
            attempt: 1,
            at: now,
            cleanup,
        };
        assert_eq!(next_start(&restart(None)), now);
        let grace = Some(Cleanup::Signalled {
            kill_at: now + 5 * s,
        });
        assert_eq!(
            next_start(&restart(grace)),
            now + 5 * s,
            "not 0 while the grace runs"
        );
        let killed = Some(Cleanup::Killed {
            give_up_at: now + 2 * s,
        });
        assert_eq!(next_start(&restart(killed)), now + 2 * s);
    }
}
