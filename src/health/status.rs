//! The whole state as the control socket's `status` reply and the body of `/status`, read from
//! every snapshot at one moment.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

use crate::aws::notices::ImdsStatus;
use crate::fmt::rfc3339;
use crate::health::views::Views;
use crate::machine::state::Phase;
use crate::model::HookResult;
use crate::model::hooks::HookStatus;
use crate::model::lifecycle::LifecycleStatus;
use crate::model::run::{AgentRuns, DrainCommandStatus};

/// The whole state as JSON: the control socket's `status` reply and the body of `/status`.
pub fn status_json(views: &Views) -> Value {
    let phase = views.phase.borrow().clone();
    let report = views.report.borrow().clone();
    let stats = views.run.borrow().clone();
    let now = Instant::now();
    let imds = views.imds.borrow().clone();
    let checks = views.checks.borrow().verdicts(now);
    json!({
        "ok": true,
        "name": views.name,
        "phase": phase.name(),
        "phase_since": rfc3339(stats.phase_since),
        "agent_pid": stats.agent_pid,
        "agent_uptime_s": stats.agent_uptime().map(|d| d.as_secs()),
        "agent_exit": stats.agent_exit,
        "uptime_s": views.uptime().as_secs(),
        "held": views.held(),
        "ready_source": report.ready_source.or(stats.ready_source),
        "status": report.status,
        "stopping": report.stopping,
        "in_flight": report.in_flight.map(|(n, _)| n),
        "in_flight_reported": report.in_flight.map(|(_, at)| rfc3339(at)),
        "drain": stats.drain.as_ref().filter(|_| phase.agent_running()).map(|d| json!({
            "reason": d.reason.as_str(),
            "deadline": rfc3339(d.deadline),
            "deadline_in_ms": d.deadline_at.saturating_duration_since(now).as_millis() as u64,
        })),
        "drains": stats.drains.iter().map(|(r, n)| (r.as_str(), *n)).collect::<BTreeMap<_, _>>(),
        "restart": restart_json(&phase, &stats.runs, now),
        "on_drain": stats.runs.drain_command.as_ref().map(drain_command_json),
        "watchdog_missed": views.watchdog_missed(now),
        "subscribers": views.subscribers(),
        "health_listen": views.health_addr.map(|a| a.to_string()),
        "imds": (!imds.endpoint.is_empty()).then(|| imds_json(&imds)),
        "lifecycle": lifecycle_json(&views.lifecycle.borrow()),
        "checks": checks.iter().map(|v| json!({
            "name": v.name,
            "ok": v.ok,
            "why": v.why,
            "target": v.result.as_ref().map(|r| r.shown.clone()),
            "latency_ms": v.result.as_ref().map(|r| r.latency.as_secs_f64() * 1000.0),
            "checked": v.result.as_ref().map(|r| rfc3339(r.at_wall)),
        })).collect::<Vec<_>>(),
    })
}

/// `--restart`: the policy, the restarts so far, and while one is pending its attempt and when.
fn restart_json(phase: &Phase, runs: &AgentRuns, now: Instant) -> Value {
    let pending = match phase {
        Phase::Restarting(r) => Some(r),
        _ => None,
    };
    json!({
        "policy": runs.policy.as_str(),
        "restarts": runs.restarts,
        "restarting": pending.is_some(),
        "attempt": pending.map(|r| r.attempt),
        "next_in_ms": pending.map(|r| u64::try_from(r.at.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
        "crash_loop": runs.crash_loop,
    })
}

fn drain_command_json(c: &DrainCommandStatus) -> Value {
    let state = match (c.status, c.killed) {
        (None, false) => "running",
        (None, true) | (Some(_), true) => "killed",
        (Some(_), false) => "exited",
    };
    json!({
        "pid": c.pid,
        "started": rfc3339(c.started),
        "state": state,
        "status": c.status,
    })
}

/// What the guard knows of IMDS, for `/status`.
fn imds_json(imds: &ImdsStatus) -> Value {
    json!({
        "endpoint": imds.endpoint,
        "instance_id": imds.instance_id,
        "region": imds.region,
        "lifecycle_state": imds.lifecycle_state,
        "last_poll": imds.last_poll.map(rfc3339),
        "last_ok": imds.last_ok.map(rfc3339),
        "errors": imds.errors_total,
        "last_error": imds.last_error,
        "notices": imds.notices.iter().map(|n| json!({
            "kind": n.kind.as_str(),
            "value": n.value,
            "seen": rfc3339(n.seen_at),
            "drain": n.drain.map(|r| r.as_str()),
        })).collect::<Vec<_>>(),
        "scheduled_events": imds.scheduled_events.iter().map(|t| json!({
            "id": t.event.id,
            "code": t.event.code_text,
            "state": t.event.state.as_str(),
            "not_before": rfc3339(t.event.not_before),
            "not_after": t.event.not_after.map(rfc3339),
            "listed": t.listed,
            "handling": t.handling.as_str(),
            "drain_at": t.handling.drain_at().map(rfc3339),
        })).collect::<Vec<_>>(),
    })
}

fn lifecycle_json(l: &LifecycleStatus) -> Value {
    let hook = |h: &Option<HookStatus>| {
        h.as_ref().map(|h| {
            json!({
                "name": h.name,
                "state": h.state.as_str(),
                "heartbeats": h.heartbeats,
                "result": h.result.map(HookResult::as_str),
                "last_error": h.last_error,
            })
        })
    };
    if l.terminate.is_none() && l.launch.is_none() && l.protected.is_none() && l.group.is_none() {
        return Value::Null;
    }
    json!({
        "group": l.group,
        "instance_id": l.instance_id,
        "heartbeat_interval_s": l.heartbeat_interval.map(|d| d.as_secs_f64()),
        "terminate_hook": hook(&l.terminate),
        "launch_hook": hook(&l.launch),
        "error": l.error,
        "protected_from_scale_in": l.protected,
        "waiting_for": l.awaiting.as_ref().map(|a| json!({
            "what": a.what.as_str(),
            "since": rfc3339(a.since),
            "detail": a.detail,
            "text": a.text(),
        })),
    })
}
