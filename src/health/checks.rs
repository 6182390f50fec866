//! Background probes: the agent's own health URL (`--child-health`) and its dependencies
//! (`--check NAME=tcp://…|http(s)://…`), each on its own task every `--check-interval`, each
//! bounded by `--check-timeout`, publishing into one snapshot. A health request only reads the
//! snapshot, so a dependency that takes ten seconds to time out never slows an answer.
//!
//! Credentials in a check URL are masked when the check is built, and probe errors are reported
//! without their URL, so they appear in no log, endpoint or metric.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::config::check::{Check, Target};
use crate::machine::state::Event;

/// The latest result of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    pub name: String,
    pub shown: String,
    pub component_type: &'static str,
    pub ok: bool,
    /// Why it failed (never with credentials).
    pub why: Option<String>,
    pub latency: Duration,
    pub at: Instant,
    pub at_wall: SystemTime,
    /// The HTTP status, for HTTP checks that got an answer.
    pub http_status: Option<u16>,
}

/// Every check's latest result; `None` until its first probe finished.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub interval: Duration,
    pub checks: Vec<(Check, Option<CheckResult>)>,
}

/// A check as a health request sees it: fresh results count, stale or missing ones fail.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: String,
    pub ok: bool,
    pub why: String,
    pub result: Option<CheckResult>,
}

impl Snapshot {
    /// Judges every check at `now`: a result older than three intervals counts as failed.
    pub fn verdicts(&self, now: Instant) -> Vec<Verdict> {
        self.checks
            .iter()
            .map(|(check, result)| {
                let (ok, why) = match result {
                    None => (false, "not checked yet".to_string()),
                    Some(r) if now.saturating_duration_since(r.at) > self.interval * 3 => (
                        false,
                        format!(
                            "stale: last result {}s old",
                            now.saturating_duration_since(r.at).as_secs()
                        ),
                    ),
                    Some(r) if r.ok => (true, "ok".to_string()),
                    Some(r) => (false, r.why.clone().unwrap_or_else(|| "failed".to_string())),
                };
                Verdict {
                    name: check.name.clone(),
                    ok,
                    why,
                    result: result.clone(),
                }
            })
            .collect()
    }
}

/// The probe settings.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub interval: Duration,
    pub timeout: Duration,
    /// Send `Event::Ready` the first time `--child-health` passes (`--ready-on health`).
    pub ready_on_child: bool,
}

/// Starts one task per check; they publish into `snapshot` until dropped (aborted).
pub fn spawn(
    checks: Vec<Check>,
    settings: ProbeSettings,
    snapshot: watch::Sender<Snapshot>,
    events: mpsc::Sender<Event>,
) -> Vec<tokio::task::JoinHandle<()>> {
    snapshot.send_modify(|s| {
        s.interval = settings.interval;
        s.checks = checks.iter().map(|c| (c.clone(), None)).collect();
    });
    // Built only when an HTTP check needs it: it loads the system's TLS roots, which costs
    // milliseconds and megabytes that a guard without HTTP checks should not pay.
    let needs_http = checks
        .iter()
        .any(|c| matches!(c.target, Target::Http { .. }));
    let client = if needs_http {
        match http_client(settings.timeout) {
            Ok(c) => Some(c),
            Err(err) => {
                tracing::error!(error = %err, "cannot build the HTTP client for checks; HTTP checks will fail");
                None
            }
        }
    } else {
        None
    };
    checks
        .into_iter()
        .enumerate()
        .map(|(index, check)| {
            let snapshot = snapshot.clone();
            let events = events.clone();
            let client = client.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                let mut ready_sent = false;
                let mut last_ok = None;
                let mut tick = tokio::time::interval(settings.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let result = probe(client.as_ref(), &check, settings.timeout).await;
                    if last_ok != Some(result.ok) {
                        match (&result.why, result.ok) {
                            (_, true) => tracing::info!(check = %check.name, target = %check.shown, "check passes"),
                            (Some(why), false) => tracing::warn!(check = %check.name, target = %check.shown, why = %why, "check fails"),
                            (None, false) => {}
                        }
                        last_ok = Some(result.ok);
                    }
                    if check.is_child && result.ok && settings.ready_on_child && !ready_sent {
                        ready_sent = true;
                        let _ = events.send(Event::Ready).await;
                    }
                    snapshot.send_modify(|s| {
                        if let Some(slot) = s.checks.get_mut(index) {
                            slot.1 = Some(result);
                        }
                    });
                }
            })
        })
        .collect()
}

fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    // No overall reqwest timeout: `probe` bounds the whole attempt itself, with one message.
    reqwest::Client::builder()
        .connect_timeout(timeout)
        // A probe sees the service as a new client would: no pooled connection hides a dead listener.
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::limited(5))
        .no_proxy()
        .user_agent(concat!("agent-guard/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Runs one probe, bounded by `timeout` whatever happens inside.
pub async fn probe(
    client: Option<&reqwest::Client>,
    check: &Check,
    timeout: Duration,
) -> CheckResult {
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, attempt(client, check)).await;
    let (ok, why, http_status) = match outcome {
        Ok(result) => result,
        Err(_) => (
            false,
            Some(format!(
                "no answer within {}",
                crate::fmt::format_duration(timeout)
            )),
            None,
        ),
    };
    CheckResult {
        name: check.name.clone(),
        shown: check.shown.clone(),
        component_type: check.component_type(),
        ok,
        why,
        latency: started.elapsed(),
        at: Instant::now(),
        at_wall: SystemTime::now(),
        http_status,
    }
}

async fn attempt(
    client: Option<&reqwest::Client>,
    check: &Check,
) -> (bool, Option<String>, Option<u16>) {
    match &check.target {
        Target::Tcp { host, port } => {
            match tokio::net::TcpStream::connect((host.as_str(), *port)).await {
                Ok(_) => (true, None, None),
                Err(e) => (false, Some(format!("connect: {e}")), None),
            }
        }
        Target::Http { url } => {
            let Some(client) = client else {
                return (
                    false,
                    Some("no HTTP client (see the log at start)".to_string()),
                    None,
                );
            };
            let response = match client.get(url.clone()).send().await {
                Ok(r) => r,
                // without_url: the URL may hold credentials.
                Err(e) => return (false, Some(describe(e.without_url())), None),
            };
            let status = response.status().as_u16();
            if !response.status().is_success() {
                return (false, Some(format!("HTTP {status}")), Some(status));
            }
            if check.is_child {
                // Spring's DOWN/OUT_OF_SERVICE and health+json's fail mean down, even with a 200.
                if let Ok(body) = response.bytes().await
                    && let Some(state) = reported_down(&body)
                {
                    return (
                        false,
                        Some(format!("the agent reports `{state}`")),
                        Some(status),
                    );
                }
            }
            (true, None, Some(status))
        }
    }
}

/// An error and its causes, on one line.
fn describe(err: reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The status a JSON health body reports, if it says the service is down.
fn reported_down(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let status = json.get("status")?.as_str()?;
    let down = ["DOWN", "OUT_OF_SERVICE", "FAIL", "ERROR"];
    down.contains(&status.to_ascii_uppercase().as_str())
        .then(|| status.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_down_states_from_json_bodies() {
        assert_eq!(
            reported_down(br#"{"status":"DOWN"}"#).as_deref(),
            Some("DOWN")
        );
        assert_eq!(
            reported_down(br#"{"status":"OUT_OF_SERVICE"}"#).as_deref(),
            Some("OUT_OF_SERVICE")
        );
        assert_eq!(
            reported_down(br#"{"status":"fail"}"#).as_deref(),
            Some("fail")
        );
        assert_eq!(reported_down(br#"{"status":"UP"}"#), None);
        assert_eq!(reported_down(b"ok"), None);
    }

    #[test]
    fn stale_or_missing_results_fail() {
        let check = Check::parse_named("r=tcp://127.0.0.1:1").expect("valid");
        let now = Instant::now();
        let fresh = CheckResult {
            name: "r".into(),
            shown: check.shown.clone(),
            component_type: "datastore",
            ok: true,
            why: None,
            latency: Duration::ZERO,
            at: now,
            at_wall: SystemTime::now(),
            http_status: None,
        };
        let snap = |r: Option<CheckResult>| Snapshot {
            interval: Duration::from_secs(5),
            checks: vec![(check.clone(), r)],
        };
        assert!(snap(Some(fresh.clone())).verdicts(now)[0].ok);
        let stale = snap(Some(fresh)).verdicts(now + Duration::from_secs(16));
        assert!(
            !stale[0].ok && stale[0].why.starts_with("stale"),
            "{stale:?}"
        );
        assert_eq!(snap(None).verdicts(now)[0].why, "not checked yet");
    }
}
