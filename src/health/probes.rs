//! The answers of `/livez`, `/readyz` and `/health`, built from the hub's snapshots (the phase,
//! the agent's reports, the last check results); no HTTP here, the server turns them into
//! responses.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::agent::hub::Hub;
use crate::fmt::rfc3339;
use crate::health::checks::Verdict;
use crate::machine::state::Phase;

/// Past this without a supervisor wake-up (it wakes every second), the guard counts as stuck.
const LOOP_STALE: Duration = Duration::from_secs(5);

/// A probe's answer before it is HTTP: passing (200) or not (503), and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub ok: bool,
    pub body: String,
}

/// One named condition of /livez or /readyz.
struct Item {
    name: String,
    ok: bool,
    why: String,
}

fn item(name: &str, ok: bool, why: impl Into<String>) -> Item {
    Item {
        name: name.to_string(),
        ok,
        why: why.into(),
    }
}

/// `/livez`: alive while the guard's loop runs, the agent runs, and its watchdog (if any) is fed.
pub fn livez(hub: &Hub, verbose: bool) -> Answer {
    listing("livez", &live_items(hub), verbose)
}

/// `/readyz`: ready while the phase is `ready` and every check passes with a fresh result.
pub fn readyz(hub: &Hub, verbose: bool) -> Answer {
    listing("readyz", &ready_items(hub), verbose)
}

fn live_items(hub: &Hub) -> Vec<Item> {
    let now = Instant::now();
    let tick = hub.stats().last_tick;
    let phase = hub.phase.borrow().clone();
    vec![
        item(
            "supervisor",
            now.saturating_duration_since(tick) < LOOP_STALE,
            "the guard's loop has not run for over 5s",
        ),
        // Between an exit and a restart the guard is at work, not dead.
        item("agent", !phase.ended(), "the agent has exited"),
        item(
            "watchdog",
            !hub.watchdog_missed(now),
            "the agent missed its --watchdog deadline",
        ),
    ]
}

fn ready_items(hub: &Hub) -> Vec<Item> {
    let phase = hub.phase.borrow().clone();
    let mut items = vec![item(
        "phase",
        matches!(phase, Phase::Ready),
        phase.name().as_str(),
    )];
    if let Some(why) = hub.held() {
        items.push(item("warm-pool", false, why));
    }
    for verdict in hub.checks.borrow().verdicts(Instant::now()) {
        items.push(item(&verdict.name, verdict.ok, verdict.why));
    }
    items
}

/// `ok`, or `KIND check failed`; with `?verbose`, Kubernetes' listing of every item.
fn listing(kind: &str, items: &[Item], verbose: bool) -> Answer {
    let ok = items.iter().all(|i| i.ok);
    let mut body = String::new();
    if verbose {
        for i in items {
            if i.ok {
                let _ = writeln!(body, "[+]{} ok", i.name);
            } else {
                let _ = writeln!(body, "[-]{} failed: {}", i.name, i.why);
            }
        }
        let _ = writeln!(
            body,
            "{kind} check {}",
            if ok { "passed" } else { "failed" }
        );
    } else if ok {
        body.push_str("ok\n");
    } else {
        let _ = writeln!(body, "{kind} check failed");
    }
    Answer { ok, body }
}

/// `/health` in the IETF health-check response format (draft-inadarei-api-health-check-06):
/// the phase, the agent's liveness and every check, each as one entry of `checks`.
pub fn health(hub: &Hub) -> Answer {
    let wall = SystemTime::now();
    let phase = hub.phase.borrow().clone();
    let live = live_items(hub);
    let alive = live.iter().all(|i| i.ok);
    let verdicts = hub.checks.borrow().verdicts(Instant::now());
    // Starting, draining and stopping are expected on the way, not failures.
    let phase_status = match phase {
        Phase::Ready => "pass",
        Phase::Starting { .. }
        | Phase::Restarting(_)
        | Phase::Draining { .. }
        | Phase::Stopping { .. } => "warn",
        Phase::Exited { .. } | Phase::Done(_) => "fail",
    };
    let mut checks = serde_json::Map::new();
    checks.insert(
        "agent-guard:phase".into(),
        json!([{"componentType": "system", "observedValue": phase.name().as_str(), "status": phase_status, "time": rfc3339(wall)}]),
    );
    checks.insert(
        "agent:uptime".into(),
        json!([agent_entry(hub, &live, wall)]),
    );
    for v in &verdicts {
        checks.insert(format!("{}:responseTime", v.name), json!([check_entry(v)]));
    }
    let failed = !alive || verdicts.iter().any(|v| !v.ok);
    let status = if failed {
        "fail"
    } else if phase_status == "warn" {
        "warn"
    } else {
        "pass"
    };
    let mut body = json!({
        "status": status,
        "version": "1",
        "releaseId": env!("CARGO_PKG_VERSION"),
        "serviceId": hub.name,
        "description": "agent-guard: the agent's health as its supervisor sees it",
        "checks": checks,
    });
    if failed {
        body["output"] = json!("a required check fails or the agent is not alive");
    }
    Answer {
        ok: !failed,
        body: body.to_string(),
    }
}

/// The agent's entry: its uptime, and why it is not alive if it is not.
fn agent_entry(hub: &Hub, live: &[Item], wall: SystemTime) -> Value {
    let alive = live.iter().all(|i| i.ok);
    let mut agent = json!({
        "componentType": "system",
        "observedValue": hub.agent_uptime().map_or(0.0, |d| d.as_secs_f64()),
        "observedUnit": "s",
        "status": if alive { "pass" } else { "fail" },
        "time": rfc3339(wall),
    });
    if let Some(pid) = hub.agent_pid() {
        agent["componentId"] = json!(pid.to_string());
    }
    if !alive {
        agent["output"] = json!(
            live.iter()
                .filter(|i| !i.ok)
                .map(|i| i.why.clone())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    agent
}

/// One check's entry: its last latency in milliseconds (one decimal), and why it fails.
fn check_entry(v: &Verdict) -> Value {
    let mut entry = json!({
        "componentType": v.result.as_ref().map_or("component", |r| r.component_type),
        "status": if v.ok { "pass" } else { "fail" },
    });
    if let Some(r) = &v.result {
        entry["observedValue"] = json!((r.latency.as_secs_f64() * 1000.0 * 10.0).round() / 10.0);
        entry["observedUnit"] = json!("ms");
        entry["time"] = json!(rfc3339(r.at_wall));
        entry["componentId"] = json!(r.shown);
    }
    if !v.ok {
        entry["output"] = json!(v.why);
    }
    entry
}
