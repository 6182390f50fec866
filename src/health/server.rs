//! The health endpoint: one HTTP server for the load balancer, the Auto Scaling group and the
//! operator. `/livez`, `/readyz` (`?verbose`), `/health` (application/health+json), `/status`
//! (JSON of the whole state) and `/metrics` (Prometheus text).
//!
//! Every answer is built from snapshots (the phase, the agent's reports, the last check results),
//! never from a probe made for the request, so it takes microseconds even while a dependency
//! hangs. The server stays bounded under abuse: a request head is at most 16 KiB and must arrive
//! within 5 s, and at most 2048 connections are open at once.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::agent::hub::HookState;
use crate::agent::hub::{Hub, status_json};
use crate::aws::notices::NoticeKind;
use crate::fmt::rfc3339;
use crate::machine::state::{DrainReason, Phase, PhaseName};

/// The largest request head read (hyper's minimum buffer is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send a request head, including between keep-alive requests.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once; past this, new ones are closed at once.
const MAX_CONNECTIONS: usize = 2048;
/// Past this without a supervisor wake-up (it wakes every second), the guard counts as stuck.
const LOOP_STALE: Duration = Duration::from_secs(5);

/// Serves health requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused_logged: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %err, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "health endpoint: connection limit reached; closing new connections"
                );
                refused_logged = Some(Instant::now());
            }
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let hub = hub.clone();
                async move { Ok::<_, Infallible>(respond(&hub, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn respond(hub: &Hub, req: &Request<Incoming>) -> Answer {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut answer = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_string(),
        );
        answer
            .headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return answer;
    }
    let verbose = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "verbose" || kv.starts_with("verbose="))
    });
    let mut answer = match req.uri().path() {
        "/livez" => probe_answer("livez", &livez(hub), verbose),
        "/readyz" => probe_answer("readyz", &readyz(hub), verbose),
        "/health" => health_json(hub),
        "/status" => json_answer(StatusCode::OK, "application/json", &status_json(hub)),
        "/metrics" => {
            let mut answer = text(StatusCode::OK, metrics(hub));
            answer.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            answer
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    answer.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if head {
        *answer.body_mut() = Full::new(Bytes::new());
    }
    answer
}

fn text(status: StatusCode, body: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    answer
}

fn json_answer(status: StatusCode, content_type: &'static str, body: &Value) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body.to_string())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    answer
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

/// Alive: the guard's loop runs, the agent runs, and its watchdog (if any) is fed.
fn livez(hub: &Hub) -> Vec<Item> {
    let now = Instant::now();
    let tick = hub.stats().last_tick;
    let phase = hub.phase.borrow().clone();
    vec![
        item(
            "supervisor",
            now.saturating_duration_since(tick) < LOOP_STALE,
            "the guard's loop has not run for over 5s",
        ),
        item("agent", phase.agent_running(), "the agent has exited"),
        item(
            "watchdog",
            !hub.watchdog_missed(now),
            "the agent missed its --watchdog deadline",
        ),
    ]
}

/// Ready: the phase is `ready` and every check passes with a fresh result.
fn readyz(hub: &Hub) -> Vec<Item> {
    let phase = hub.phase.borrow().clone();
    let mut items = vec![item(
        "phase",
        matches!(phase, Phase::Ready),
        phase.name().as_str(),
    )];
    for verdict in hub.checks.borrow().verdicts(Instant::now()) {
        items.push(item(&verdict.name, verdict.ok, verdict.why));
    }
    items
}

/// `ok` or 503, with Kubernetes' `?verbose` listing.
fn probe_answer(kind: &str, items: &[Item], verbose: bool) -> Answer {
    let ok = items.iter().all(|i| i.ok);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
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
    text(status, body)
}

/// `/health` in the IETF health-check response format (draft-inadarei-api-health-check-06).
fn health_json(hub: &Hub) -> Answer {
    let now = Instant::now();
    let wall = SystemTime::now();
    let phase = hub.phase.borrow().clone();
    let live = livez(hub).iter().all(|i| i.ok);
    let verdicts = hub.checks.borrow().verdicts(now);
    let mut checks = serde_json::Map::new();
    let phase_status = match phase {
        Phase::Ready => "pass",
        Phase::Starting { .. } | Phase::Draining { .. } | Phase::Stopping { .. } => "warn",
        Phase::Exited { .. } | Phase::Done(_) => "fail",
    };
    checks.insert(
        "agent-guard:phase".into(),
        json!([{"componentType": "system", "observedValue": phase.name().as_str(), "status": phase_status, "time": rfc3339(wall)}]),
    );
    let agent_status = if live { "pass" } else { "fail" };
    let mut agent = json!({
        "componentType": "system",
        "observedValue": hub.agent_uptime().map_or(0.0, |d| d.as_secs_f64()),
        "observedUnit": "s",
        "status": agent_status,
        "time": rfc3339(wall),
    });
    if let Some(pid) = hub.agent_pid() {
        agent["componentId"] = json!(pid.to_string());
    }
    if !live {
        agent["output"] = json!(
            livez(hub)
                .iter()
                .filter(|i| !i.ok)
                .map(|i| i.why.clone())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    checks.insert("agent:uptime".into(), json!([agent]));
    for v in &verdicts {
        let mut entry = json!({
            "componentType": v.result.as_ref().map_or("component", |r| r.component_type),
            "status": if v.ok { "pass" } else { "fail" },
        });
        if let Some(r) = &v.result {
            entry["observedValue"] =
                json!((r.latency.as_secs_f64() * 1000.0 * 10.0).round() / 10.0);
            entry["observedUnit"] = json!("ms");
            entry["time"] = json!(rfc3339(r.at_wall));
            entry["componentId"] = json!(r.shown);
        }
        if !v.ok {
            entry["output"] = json!(v.why);
        }
        checks.insert(format!("{}:responseTime", v.name), json!([entry]));
    }
    let failed = !live || verdicts.iter().any(|v| !v.ok);
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
    let code = if failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_answer(code, "application/health+json", &body)
}

/// A label value in Prometheus text: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family in the Prometheus text format.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", parts.join(","));
        }
        let _ = writeln!(self.out, " {value}");
        self
    }
}

/// `/metrics`.
fn metrics(hub: &Hub) -> String {
    let mut out = String::new();
    let phase = hub.phase.borrow().clone();
    let stats = hub.stats().clone();
    let report = hub.report().clone();
    let imds = hub.imds.borrow().clone();
    let now = Instant::now();

    let mut f = Family::new(
        &mut out,
        "agent_guard_phase",
        "gauge",
        "The supervisor's phase: 1 for the current one.",
    );
    for name in PhaseName::ALL {
        f.sample(
            "agent_guard_phase",
            &[("phase", name.as_str())],
            f64::from(u8::from(phase.name() == name)),
        );
    }
    let mut f = Family::new(
        &mut out,
        "agent_guard_drains_total",
        "counter",
        "Drains started, by reason.",
    );
    for reason in DrainReason::ALL {
        let n = stats.drains.get(&reason).copied().unwrap_or(0);
        f.sample(
            "agent_guard_drains_total",
            &[("reason", reason.as_str())],
            n as f64,
        );
    }
    let mut f = Family::new(
        &mut out,
        "agent_guard_notices_total",
        "counter",
        "IMDS notices seen, by kind.",
    );
    for kind in [
        NoticeKind::LifecycleState,
        NoticeKind::Spot,
        NoticeKind::Rebalance,
    ] {
        let n = imds.notices.iter().filter(|n| n.kind == kind).count();
        f.sample(
            "agent_guard_notices_total",
            &[("kind", kind.as_str())],
            n as f64,
        );
    }
    Family::new(
        &mut out,
        "agent_guard_imds_errors_total",
        "counter",
        "Failed IMDS reads.",
    )
    .sample(
        "agent_guard_imds_errors_total",
        &[],
        imds.errors_total as f64,
    );
    let verdicts = hub.checks.borrow().verdicts(now);
    let mut f = Family::new(
        &mut out,
        "agent_guard_check_up",
        "gauge",
        "Whether a check passes (1) or fails (0); stale results fail.",
    );
    for v in &verdicts {
        f.sample(
            "agent_guard_check_up",
            &[("check", &v.name)],
            f64::from(u8::from(v.ok)),
        );
    }
    let mut f = Family::new(
        &mut out,
        "agent_guard_check_latency_seconds",
        "gauge",
        "How long the last probe of a check took.",
    );
    for v in &verdicts {
        if let Some(r) = &v.result {
            f.sample(
                "agent_guard_check_latency_seconds",
                &[("check", &v.name)],
                r.latency.as_secs_f64(),
            );
        }
    }
    Family::new(
        &mut out,
        "agent_guard_agent_up",
        "gauge",
        "1 while the agent runs.",
    )
    .sample(
        "agent_guard_agent_up",
        &[],
        f64::from(u8::from(phase.agent_running())),
    );
    Family::new(
        &mut out,
        "agent_guard_agent_exits_total",
        "counter",
        "Times the agent exited (the guard does not restart it).",
    )
    .sample(
        "agent_guard_agent_exits_total",
        &[],
        f64::from(u8::from(stats.agent_exit.is_some())),
    );
    Family::new(
        &mut out,
        "agent_guard_agent_restarts_total",
        "counter",
        "Times the agent was restarted (never: a restart is systemd's or the group's job).",
    )
    .sample("agent_guard_agent_restarts_total", &[], 0.0);
    Family::new(
        &mut out,
        "agent_guard_watchdog_missed",
        "gauge",
        "1 while the agent's --watchdog deadline is missed.",
    )
    .sample(
        "agent_guard_watchdog_missed",
        &[],
        f64::from(u8::from(hub.watchdog_missed(now))),
    );
    Family::new(
        &mut out,
        "agent_guard_subscribers",
        "gauge",
        "Connections subscribed to drain announcements.",
    )
    .sample("agent_guard_subscribers", &[], hub.subscribers() as f64);
    if let Some((n, _)) = report.in_flight {
        Family::new(
            &mut out,
            "agent_guard_agent_in_flight",
            "gauge",
            "Work in flight, as the agent last reported it.",
        )
        .sample("agent_guard_agent_in_flight", &[], n as f64);
    }
    let lifecycle = hub.lifecycle().clone();
    if let Some(protected) = lifecycle.protected {
        Family::new(
            &mut out,
            "agent_guard_protected_from_scale_in",
            "gauge",
            "1 while the instance is protected from scale-in (--protect-while-busy).",
        )
        .sample(
            "agent_guard_protected_from_scale_in",
            &[],
            f64::from(u8::from(protected)),
        );
    }
    let mut f = Family::new(
        &mut out,
        "agent_guard_lifecycle_calls_total",
        "counter",
        "Auto Scaling API calls, by action and outcome.",
    );
    for ((action, outcome), n) in &lifecycle.calls {
        f.sample(
            "agent_guard_lifecycle_calls_total",
            &[("action", action), ("outcome", outcome)],
            *n as f64,
        );
    }
    let mut f = Family::new(
        &mut out,
        "agent_guard_lifecycle_heartbeats_total",
        "counter",
        "Lifecycle heartbeats sent.",
    );
    if let Some(h) = &lifecycle.terminate {
        f.sample(
            "agent_guard_lifecycle_heartbeats_total",
            &[("hook", &h.name)],
            h.heartbeats as f64,
        );
    }
    let mut f = Family::new(
        &mut out,
        "agent_guard_lifecycle_completed",
        "gauge",
        "1 once a hook was completed, by hook and result.",
    );
    for h in [&lifecycle.terminate, &lifecycle.launch]
        .into_iter()
        .flatten()
    {
        if let (Some(result), HookState::Completed) = (h.result, h.state) {
            f.sample(
                "agent_guard_lifecycle_completed",
                &[("hook", &h.name), ("result", result.as_str())],
                1.0,
            );
        }
    }
    Family::new(
        &mut out,
        "agent_guard_uptime_seconds",
        "gauge",
        "How long the guard has run.",
    )
    .sample(
        "agent_guard_uptime_seconds",
        &[],
        hub.uptime().as_secs_f64(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
