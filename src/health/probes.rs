//! The answers of `/livez`, `/readyz` and `/health`, built from the views's snapshots (the phase,
//! the agent's reports, the last check results); no HTTP here, the server turns them into
//! responses.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::fmt::rfc3339;
use crate::health::checks::Verdict;
use crate::health::views::Views;
use crate::machine::state::Phase;

/// Past this without a supervisor wake-up (it wakes every second), the guard counts as stuck.
const LOOP_STALE: Duration = Duration::from_secs(5);

/// A probe's answer before it is HTTP: passing (200) or not (503), and the body. The common
/// bodies are static, so that a load balancer's probe allocates nothing for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub ok: bool,
    pub body: Cow<'static, str>,
}

/// One named condition of /livez or /readyz.
struct Item {
    name: Cow<'static, str>,
    ok: bool,
    why: Cow<'static, str>,
}

fn item(name: &'static str, ok: bool, why: impl Into<Cow<'static, str>>) -> Item {
    Item {
        name: Cow::Borrowed(name),
        ok,
        why: why.into(),
    }
}

/// `/livez`: the guard's liveness, for a probe that restarts what fails it: alive while the
/// guard's loop runs, and the agent runs with its watchdog (if any) fed, or the guard stays
/// after the agent to complete a lifecycle hook (after a crash loop it waits for the group to
/// terminate the instance). A guard restarted then would leave that hook to its timeout.
pub fn livez(views: &Views, verbose: bool) -> Answer {
    listing("livez", live_items(views, views.stays_for_hook()), verbose)
}

/// `/readyz`: ready while the phase is `ready` and every check passes with a fresh result.
pub fn readyz(views: &Views, verbose: bool) -> Answer {
    listing("readyz", ready_items(views), verbose)
}

/// The liveness items; `staying`: the agent is gone and the guard stays, at work, for a hook
/// (the agent's items then pass: nothing of it is left to be alive or to feed a watchdog).
fn live_items(views: &Views, staying: bool) -> [Item; 3] {
    let now = Instant::now();
    let tick = views.last_tick();
    let ended = views.phase.borrow().ended() && !staying;
    [
        item(
            "supervisor",
            now.saturating_duration_since(tick) < LOOP_STALE,
            "the guard's loop has not run for over 5s",
        ),
        // Between an exit and a restart the guard is at work, not dead.
        item("agent", !ended, "the agent has exited"),
        item(
            "watchdog",
            staying || !views.watchdog_missed(now),
            "the agent missed its --watchdog deadline",
        ),
    ]
}

/// Every item, read from the snapshots now; an iterator, not a list, so that the usual answer
/// (no checks, not held) allocates nothing.
fn ready_items(views: &Views) -> impl Iterator<Item = Item> {
    let (ready, phase) = {
        let phase = views.phase.borrow();
        (matches!(*phase, Phase::Ready), phase.name())
    };
    let held = views.held();
    let verdicts = views.checks.borrow().verdicts(Instant::now());
    std::iter::once(item("phase", ready, phase.as_str()))
        .chain(held.map(|why| item("warm-pool", false, why)))
        .chain(verdicts.into_iter().map(|v| Item {
            name: Cow::Owned(v.name),
            ok: v.ok,
            why: Cow::Owned(v.why),
        }))
}

/// `ok`, or `KIND check failed`; with `?verbose`, Kubernetes' listing of every item.
fn listing(kind: &str, items: impl IntoIterator<Item = Item>, verbose: bool) -> Answer {
    if !verbose {
        let ok = items.into_iter().all(|i| i.ok);
        let body = if ok {
            Cow::Borrowed("ok\n")
        } else {
            Cow::Owned(format!("{kind} check failed\n"))
        };
        return Answer { ok, body };
    }
    let mut ok = true;
    let mut body = String::new();
    for i in items {
        ok &= i.ok;
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
    Answer {
        ok,
        body: Cow::Owned(body),
    }
}

/// `/health` in the IETF health-check response format (draft-inadarei-api-health-check-06):
/// the phase, the agent's liveness and every check, each as one entry of `checks`.
pub fn health(views: &Views) -> Answer {
    let wall = SystemTime::now();
    let phase = views.phase.borrow().clone();
    // The agent's own liveness: a guard staying for a hook does not make a gone agent alive.
    let live = live_items(views, false);
    let alive = live.iter().all(|i| i.ok);
    let verdicts = views.checks.borrow().verdicts(Instant::now());
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
        json!([agent_entry(views, &live, wall)]),
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
        "serviceId": views.name,
        "description": "agent-guard: the agent's health as its supervisor sees it",
        "checks": checks,
    });
    if failed {
        body["output"] = json!("a required check fails or the agent is not alive");
    }
    Answer {
        ok: !failed,
        body: Cow::Owned(body.to_string()),
    }
}

/// The agent's entry: its uptime, and why it is not alive if it is not.
fn agent_entry(views: &Views, live: &[Item], wall: SystemTime) -> Value {
    let alive = live.iter().all(|i| i.ok);
    let mut agent = json!({
        "componentType": "system",
        "observedValue": views.agent_uptime().map_or(0.0, |d| d.as_secs_f64()),
        "observedUnit": "s",
        "status": if alive { "pass" } else { "fail" },
        "time": rfc3339(wall),
    });
    if let Some(pid) = views.agent_pid() {
        agent["componentId"] = json!(pid.to_string());
    }
    if !alive {
        agent["output"] = json!(
            live.iter()
                .filter(|i| !i.ok)
                .map(|i| i.why.as_ref())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Awaiting;
    use crate::model::lifecycle::{AwaitingStatus, LifecycleStatus};
    use crate::process::exit::ChildExit;
    use tokio::sync::watch;

    /// Views of an agent that is gone for good; `awaiting`: what the lifecycle work waits for.
    fn gone(awaiting: Option<Awaiting>) -> Views {
        let phase = watch::channel(Phase::Done(ChildExit::for_test(1))).1;
        let mut views = Views::fixed("agent", phase);
        views.lifecycle = watch::channel(LifecycleStatus {
            awaiting: awaiting.map(|what| AwaitingStatus {
                what,
                since: SystemTime::now(),
                detail: String::new(),
            }),
            ..LifecycleStatus::default()
        })
        .1;
        views
    }

    /// A guard that stays after its agent to complete a hook (after a crash loop, for the
    /// group to terminate the instance) is live: a liveness probe must not restart it and leave
    /// the hook to its timeout. Its `/health` still says the agent is not alive.
    #[test]
    fn livez_passes_while_the_guard_stays_for_a_hook_and_fails_once_nothing_is_left_to_do() {
        let staying = gone(Some(Awaiting::Termination));
        assert!(livez(&staying, false).ok, "{}", livez(&staying, true).body);
        assert!(!health(&staying).ok, "the agent is gone: /health fails");
        for what in [Awaiting::WaitState, Awaiting::OtherGuards] {
            assert!(livez(&gone(Some(what)), false).ok, "{what:?}");
        }
        let done = gone(None);
        let answer = livez(&done, true);
        assert!(!answer.ok);
        assert!(
            answer
                .body
                .contains("[-]agent failed: the agent has exited"),
            "{}",
            answer.body
        );
    }
}
