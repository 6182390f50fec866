//! Background probes: the agent's own health URL (`--child-health`) and its dependencies
//! (`--check NAME=tcp://…|http(s)://…`), each on its own task every `--check-interval`, each
//! bounded by `--check-timeout`, publishing into one snapshot. A health request only reads the
//! snapshot, so a dependency that takes ten seconds to time out never slows an answer.
//!
//! Credentials in a check URL are masked when the check is built, and probe errors are reported
//! without their URL, so they appear in no log, endpoint or metric.
//!
//! HTTP checks make one GET on a new connection per probe ([`http_get`]): a probe sees the
//! service as a new client would, and no pooled connection hides a dead listener.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::check::{Check, Target};
use crate::fmt::format_duration;
use crate::health::http_get::{self, GetError};
use crate::machine::state::Event;

/// Why one probe failed. `Display` is the `why` an operator reads in `/readyz?verbose`,
/// `/health`, `/status` and the log, so it never holds the check's URL (it may carry
/// credentials) and it fits on one line.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeError {
    /// The TCP connection failed (refused, unreachable, name not resolved). Not a `#[source]`:
    /// the text already ends with the OS error, and a cause chain would print it twice.
    #[error("connect: {0}")]
    Connect(Arc<std::io::Error>),
    /// Nothing complete came back within `--check-timeout`.
    #[error("no answer within {}", format_duration(*.0))]
    Timeout(Duration),
    /// The HTTP request failed before a status came back (connect, TLS, HTTP or a redirect).
    /// Its one line names the stage and the OS or protocol error, never the URL; its causes are
    /// already on that line, so it is not a `#[source]` either.
    #[error("{0}")]
    Request(Arc<GetError>),
    /// The service answered with a status other than 2xx.
    #[error("HTTP {0}")]
    Status(u16),
    /// The agent's own health URL answered 2xx but its JSON body says it is down.
    #[error("the agent reports `{state}`")]
    ReportsDown {
        /// The `status` value as the agent wrote it (`DOWN`, `OUT_OF_SERVICE`, `fail`, …).
        state: String,
    },
}

/// The latest result of one check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub shown: String,
    pub component_type: &'static str,
    /// Passed, or why not (never with credentials).
    pub outcome: Result<(), ProbeError>,
    pub latency: Duration,
    pub at: Instant,
    pub at_wall: SystemTime,
}

impl CheckResult {
    /// Whether the probe passed.
    pub fn ok(&self) -> bool {
        self.outcome.is_ok()
    }
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
                    Some(r) => match &r.outcome {
                        Ok(()) => (true, "ok".to_string()),
                        Err(err) => (false, err.to_string()),
                    },
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
    /// Send `Event::Ready` each time `--child-health` passes (`--ready-on health`).
    pub ready_on_child: bool,
}

/// Starts one task per check; they publish into `snapshot` until `shutdown` is cancelled.
///
/// On cancel each task ends at once: a probe in flight is dropped rather than waited for, since
/// it may take up to `--check-timeout` and its result would be read by nobody.
pub fn spawn(
    checks: Vec<Check>,
    settings: ProbeSettings,
    snapshot: watch::Sender<Snapshot>,
    events: mpsc::Sender<Event>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    snapshot.send_modify(|s| {
        s.interval = settings.interval;
        s.checks = checks.iter().map(|c| (c.clone(), None)).collect();
    });
    checks
        .into_iter()
        .enumerate()
        .map(|(index, check)| {
            let task = Prober {
                index,
                check,
                settings: settings.clone(),
                snapshot: snapshot.clone(),
                events: events.clone(),
            };
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.run_until_cancelled(task.run()).await;
            })
        })
        .collect()
}

/// One check's task: probes on every tick and publishes the result in its slot.
struct Prober {
    /// The check's slot in the snapshot.
    index: usize,
    check: Check,
    settings: ProbeSettings,
    snapshot: watch::Sender<Snapshot>,
    events: mpsc::Sender<Event>,
}

impl Prober {
    /// Runs until dropped; logs only when the check starts passing or failing.
    async fn run(self) {
        let check = &self.check;
        let mut last_ok = None;
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let result = probe(check, self.settings.timeout).await;
            if last_ok != Some(result.ok()) {
                match &result.outcome {
                    Ok(()) => {
                        tracing::info!(check = %check.name, target = %check.shown, "check passes")
                    }
                    Err(why) => {
                        tracing::warn!(check = %check.name, target = %check.shown, why = %why, "check fails")
                    }
                }
                last_ok = Some(result.ok());
            }
            // Every pass, not only the first: an agent started again (`--restart`) is ready
            // anew, and `Ready` in any other phase changes nothing.
            if check.is_child && result.ok() && self.settings.ready_on_child {
                let _ = self.events.send(Event::Ready).await;
            }
            self.snapshot.send_modify(|s| {
                if let Some(slot) = s.checks.get_mut(self.index) {
                    slot.1 = Some(result);
                }
            });
        }
    }
}

/// Runs one probe, bounded by `timeout` whatever happens inside.
pub async fn probe(check: &Check, timeout: Duration) -> CheckResult {
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, attempt(check))
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)));
    CheckResult {
        shown: check.shown.clone(),
        component_type: check.component_type(),
        outcome,
        latency: started.elapsed(),
        at: Instant::now(),
        at_wall: SystemTime::now(),
    }
}

/// One attempt, unbounded: `probe` bounds it.
async fn attempt(check: &Check) -> Result<(), ProbeError> {
    match &check.target {
        Target::Tcp { host, port } => {
            tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| ProbeError::Connect(Arc::new(e)))?;
            Ok(())
        }
        Target::Http { url } => {
            // Only the agent's own URL has its body read (a dependency's is not ours to judge).
            let answer = http_get::get(url, check.is_child)
                .await
                .map_err(|e| ProbeError::Request(Arc::new(e)))?;
            if !answer.status.is_success() {
                return Err(ProbeError::Status(answer.status.as_u16()));
            }
            // Spring's DOWN/OUT_OF_SERVICE and health+json's fail mean down, even with a 200. A
            // body that is not JSON, or larger than a health document, leaves the status to judge.
            if let Some(body) = &answer.body
                && let Some(state) = reported_down(body)
            {
                return Err(ProbeError::ReportsDown { state });
            }
            Ok(())
        }
    }
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
    use crate::net::test_server::{closed_port, serve};

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
            shown: check.shown.clone(),
            component_type: "datastore",
            outcome: Ok(()),
            latency: Duration::ZERO,
            at: now,
            at_wall: SystemTime::now(),
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

    #[test]
    fn probe_errors_read_as_before() {
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(
            ProbeError::Connect(Arc::new(refused)).to_string(),
            "connect: Connection refused (os error 111)"
        );
        assert_eq!(
            ProbeError::Timeout(Duration::from_secs(1)).to_string(),
            "no answer within 1s"
        );
        assert_eq!(
            ProbeError::Timeout(Duration::from_millis(1500)).to_string(),
            "no answer within 1.5s"
        );
        assert_eq!(ProbeError::Status(502).to_string(), "HTTP 502");
        let down = ProbeError::ReportsDown {
            state: "DOWN".into(),
        };
        assert_eq!(down.to_string(), "the agent reports `DOWN`");
    }

    #[tokio::test]
    async fn a_refused_tcp_check_fails_with_the_os_error() {
        let port = closed_port();
        let check = Check::parse_named(&format!("r=tcp://127.0.0.1:{port}")).expect("valid");
        let result = probe(&check, Duration::from_secs(5)).await;
        assert!(
            matches!(&result.outcome, Err(ProbeError::Connect(_))),
            "{result:?}"
        );
        assert!(!result.ok());
    }

    #[tokio::test]
    async fn an_http_check_fails_on_a_status_other_than_2xx() {
        let addr =
            serve(|_| "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_string())
                .await;
        let check = Check::parse_named(&format!("api=http://{addr}/health")).expect("valid");
        let result = probe(&check, Duration::from_secs(10)).await;
        assert!(
            matches!(result.outcome, Err(ProbeError::Status(503))),
            "{result:?}"
        );
    }

    /// `{"status":"DOWN"}` with a 200 from the path `/down`, `{"status":"UP"}` from any other.
    fn spring_like(head: &str) -> String {
        let body = if head.starts_with("GET /down ") {
            r#"{"status":"DOWN"}"#
        } else {
            r#"{"status":"UP"}"#
        };
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn the_agents_own_url_saying_down_with_a_200_fails_and_a_dependencys_does_not() {
        let addr = serve(spring_like).await;
        let within = Duration::from_secs(10);
        let child = Check::child(&format!("http://{addr}/down")).expect("valid");
        let result = probe(&child, within).await;
        assert_eq!(
            result.outcome.expect_err("DOWN").to_string(),
            "the agent reports `DOWN`"
        );
        let child = Check::child(&format!("http://{addr}/up")).expect("valid");
        assert!(probe(&child, within).await.ok());
        // A dependency's body is not the guard's to judge: the 200 passes.
        let dependency = Check::parse_named(&format!("dep=http://{addr}/down")).expect("valid");
        assert!(probe(&dependency, within).await.ok());
    }

    #[tokio::test]
    async fn http_probe_errors_hold_no_credentials_from_the_url() {
        let port = closed_port();
        let check = Check::parse_named(&format!(
            "db=http://admin:hunter2@127.0.0.1:{port}/h?token=s3cr3t"
        ))
        .expect("valid");
        let result = probe(&check, Duration::from_secs(10)).await;
        let why = result.outcome.expect_err("refused").to_string();
        assert!(why.starts_with("connect: "), "{why}");
        assert!(!why.contains("hunter2") && !why.contains("s3cr3t"), "{why}");
        let check = Check::parse_named(&format!(
            "db=https://admin:hunter2@127.0.0.1:{port}/h?token=s3cr3t"
        ))
        .expect("valid");
        let why = probe(&check, Duration::from_secs(10))
            .await
            .outcome
            .expect_err("refused")
            .to_string();
        assert!(!why.contains("hunter2") && !why.contains("s3cr3t"), "{why}");
    }

    #[tokio::test]
    async fn probe_tasks_end_on_cancel_even_mid_probe() {
        // Accepts connections and never answers: every HTTP probe hangs until its timeout.
        let hang = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = hang.local_addr().expect("addr").port();
        let checks = vec![
            Check::parse_named(&format!("hang=http://127.0.0.1:{port}/")).expect("valid"),
            Check::parse_named(&format!("tcp=tcp://127.0.0.1:{port}")).expect("valid"),
        ];
        let (snapshot, snapshot_rx) = watch::channel(Snapshot::default());
        let (events, _events_rx) = mpsc::channel(1);
        let shutdown = CancellationToken::new();
        let settings = ProbeSettings {
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(3600),
            ready_on_child: false,
        };
        let tasks = spawn(checks, settings, snapshot, events, shutdown.clone());
        // The TCP check has reported, so the HTTP one is stuck in its hour-long probe.
        let reported = async {
            let mut rx = snapshot_rx.clone();
            while rx.borrow_and_update().checks[1].1.is_none() {
                rx.changed().await.expect("sender alive");
            }
        };
        tokio::time::timeout(Duration::from_secs(10), reported)
            .await
            .expect("the TCP check reports");
        shutdown.cancel();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .expect("a probe task ends at once on cancel")
                .expect("and does not panic");
        }
        assert!(
            snapshot_rx.borrow().checks[0].1.is_none(),
            "the hung probe was dropped"
        );
    }
}
