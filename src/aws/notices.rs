//! Polls IMDS for scale-in, warm-pool, spot and rebalance notices, and turns each new one into a
//! drain request for the supervisor; hands EC2 scheduled events on to `maintenance`. It never
//! dies of an IMDS failure: errors are logged (rate-limited) and retried with capped backoff,
//! and only a notice starts a drain.
//!
//! [`Interpreter`] decides what a notice means and holds no I/O, so it is tested as a table;
//! [`Poller`] does the reading, pacing and logging around it.

use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::aws::imds::{ImdsClient, ImdsError};
use crate::aws::lifecycle_state::LifecycleState;
use crate::aws::scheduled::{self, Tracked};
use crate::config::settings::OnRebalance;
use crate::fmt::{capped, format_duration};
use crate::journal::Record;
use crate::machine::state::{DrainReason, Event};

/// The paths polled each round (and `scheduled::PATH`, when scheduled events are watched).
pub const LIFECYCLE_PATH: &str = "autoscaling/target-lifecycle-state";
pub const SPOT_PATH: &str = "spot/instance-action";
pub const REBALANCE_PATH: &str = "events/recommendations/rebalance";

/// How long a spot notice whose time cannot be read is assumed to give: AWS's usual warning.
const SPOT_FALLBACK: Duration = Duration::from_secs(120);
/// The longest pause between rounds while IMDS is failing: five poll intervals, at most 10 s,
/// so that a spot notice posted during an outage is still seen with most of its two minutes.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF_POLLS: u32 = 5;
/// How long `--imds auto` waits at start for IMDS before turning notices off. On EC2 IMDS
/// answers in milliseconds; elsewhere the agent is already running meanwhile.
const AUTO_PROBE_BOUND: Duration = Duration::from_secs(3);
/// How often a persisting IMDS failure is logged again.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);
/// The notices kept for `/status`, the latest ones: a body that changes on every poll (as a
/// broken IMDS may serve) must not grow the guard without bound.
pub const NOTICES_KEPT: usize = 16;
/// The most of a value read from IMDS that is logged or kept: a notice is a short JSON object, a
/// state one word; a 10 MB answer is shown as its start and its size.
pub const VALUE_SHOWN: usize = 512;

/// The poller's settings.
#[derive(Debug, Clone)]
pub struct NoticeSettings {
    pub poll: Duration,
    pub on_rebalance: OnRebalance,
    pub spot_margin: Duration,
}

pub use crate::journal::NoticeKind;

/// A notice as seen, for `/status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeRecord {
    pub kind: NoticeKind,
    /// The value read (the state, or the notice's JSON).
    pub value: String,
    pub seen_at: SystemTime,
    /// The drain it started, if any.
    pub drain: Option<DrainReason>,
}

/// What the guard knows of IMDS, published for health and status.
#[derive(Debug, Clone, Default)]
pub struct ImdsStatus {
    pub endpoint: String,
    pub instance_id: Option<String>,
    pub region: Option<String>,
    pub lifecycle_state: Option<String>,
    pub last_poll: Option<SystemTime>,
    pub last_ok: Option<SystemTime>,
    pub errors_total: u64,
    pub last_error: Option<String>,
    /// The latest notices, at most [`NOTICES_KEPT`], oldest first.
    pub notices: Vec<NoticeRecord>,
    /// The EC2 scheduled events seen, and what the guard does about each.
    pub scheduled_events: Vec<Tracked>,
    /// Notices seen since start, by kind (for the counter: the list keeps only the latest).
    pub notices_seen: [u64; 4],
}

impl ImdsStatus {
    /// Keeps `record` among the latest notices and counts it.
    pub fn record_notice(&mut self, record: NoticeRecord) {
        self.notices_seen[kind_index(record.kind)] += 1;
        if self.notices.len() >= NOTICES_KEPT {
            let excess = self.notices.len() + 1 - NOTICES_KEPT;
            self.notices.drain(..excess);
        }
        self.notices.push(record);
    }

    /// How many notices of `kind` were seen since start.
    pub fn notices_of(&self, kind: NoticeKind) -> u64 {
        self.notices_seen[kind_index(kind)]
    }
}

/// The place of `kind` in [`ImdsStatus::notices_seen`]; exhaustive, so a new kind must be placed.
fn kind_index(kind: NoticeKind) -> usize {
    match kind {
        NoticeKind::LifecycleState => 0,
        NoticeKind::Spot => 1,
        NoticeKind::Rebalance => 2,
        NoticeKind::ScheduledEvent => 3,
    }
}

/// A decision about one notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub record: NoticeRecord,
    /// The drain to request, with the latest SIGKILL time for a spot interruption.
    pub drain: Option<(DrainReason, Option<Instant>)>,
    /// A line for the log.
    pub note: String,
}

/// Turns raw notice values into decisions, each new value acted on once.
#[derive(Debug, Clone)]
pub struct Interpreter {
    on_rebalance: OnRebalance,
    spot_margin: Duration,
    last_state: Option<String>,
    last_spot: Option<String>,
    last_rebalance: Option<String>,
    /// `InService` was seen: a later `Warmed:*` means going back to the warm pool.
    seen_in_service: bool,
    scale_in_sent: bool,
}

impl Interpreter {
    pub fn new(on_rebalance: OnRebalance, spot_margin: Duration) -> Self {
        Interpreter {
            on_rebalance,
            spot_margin,
            last_state: None,
            last_spot: None,
            last_rebalance: None,
            seen_in_service: false,
            scale_in_sent: false,
        }
    }

    /// `autoscaling/target-lifecycle-state`; `None` is a 404 (a brand-new instance).
    pub fn lifecycle(&mut self, value: Option<&str>, seen: SystemTime) -> Option<Decision> {
        let value = value?.trim();
        if self.last_state.as_deref() == Some(value) {
            return None;
        }
        let first = self.last_state.is_none();
        self.last_state = Some(value.to_string());
        let shown = capped(value, VALUE_SHOWN);
        let record = |drain| NoticeRecord {
            kind: NoticeKind::LifecycleState,
            value: shown.to_string(),
            seen_at: seen,
            drain,
        };
        let (drain, note) = match LifecycleState::parse(value) {
            LifecycleState::InService => {
                self.seen_in_service = true;
                (None, "target lifecycle state is InService".to_string())
            }
            LifecycleState::Terminated if !self.scale_in_sent => {
                self.scale_in_sent = true;
                (
                    Some(DrainReason::ScaleIn),
                    "target lifecycle state is Terminated: scale-in".to_string(),
                )
            }
            LifecycleState::Terminated => (
                None,
                "target lifecycle state is Terminated again".to_string(),
            ),
            warmed if warmed.is_warmed() => {
                let warmed = &shown;
                if self.seen_in_service {
                    (
                        Some(DrainReason::WarmPool),
                        format!("target lifecycle state is {warmed}: going back to the warm pool"),
                    )
                } else if first {
                    (
                        None,
                        format!(
                            "target lifecycle state is {warmed}: launched into a warm pool; the agent warms up"
                        ),
                    )
                } else {
                    (None, format!("target lifecycle state is {warmed}"))
                }
            }
            LifecycleState::Detached | LifecycleState::Standby => (
                None,
                format!(
                    "target lifecycle state is {value}: no lifecycle hook applies, not draining"
                ),
            ),
            _ => (
                None,
                format!("unknown target lifecycle state `{shown}`: not draining"),
            ),
        };
        Some(Decision {
            record: record(drain),
            drain: drain.map(|reason| (reason, None)),
            note,
        })
    }

    /// `spot/instance-action`: `{"action": "terminate|stop|hibernate", "time": "RFC 3339"}`.
    pub fn spot(
        &mut self,
        body: Option<&str>,
        seen: SystemTime,
        seen_at: Instant,
    ) -> Option<Decision> {
        let body = body?.trim();
        if self.last_spot.as_deref() == Some(body) {
            return None;
        }
        self.last_spot = Some(body.to_string());
        let parsed = parse_spot(body);
        // Losing work is worse than draining early: an unreadable notice still counts, with the
        // two minutes AWS usually gives.
        let (action, notice_at, note_extra) = match &parsed {
            Some((action, time)) => (capped(action, 64), *time, String::new()),
            None => (
                "unknown".into(),
                seen + SPOT_FALLBACK,
                " (body unreadable: assuming 2 minutes)".to_string(),
            ),
        };
        let kill_by_sys = notice_at
            .checked_sub(self.spot_margin)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let left = kill_by_sys.duration_since(seen).unwrap_or(Duration::ZERO);
        let kill_by = crate::machine::state::later(seen_at, left);
        Some(Decision {
            record: NoticeRecord {
                kind: NoticeKind::Spot,
                value: capped(body, VALUE_SHOWN).into_owned(),
                seen_at: seen,
                drain: Some(DrainReason::SpotInterruption),
            },
            drain: Some((DrainReason::SpotInterruption, Some(kill_by))),
            note: format!(
                "spot interruption notice: {action} at {}{note_extra}; the agent must be gone within {}",
                crate::fmt::rfc3339(notice_at),
                format_duration(left)
            ),
        })
    }

    /// `events/recommendations/rebalance`: `{"noticeTime": "RFC 3339"}`.
    pub fn rebalance(&mut self, body: Option<&str>, seen: SystemTime) -> Option<Decision> {
        let body = body?.trim();
        if self.last_rebalance.as_deref() == Some(body) {
            return None;
        }
        self.last_rebalance = Some(body.to_string());
        let drain = (self.on_rebalance == OnRebalance::Drain).then_some(DrainReason::Rebalance);
        Some(Decision {
            record: NoticeRecord {
                kind: NoticeKind::Rebalance,
                value: capped(body, VALUE_SHOWN).into_owned(),
                seen_at: seen,
                drain,
            },
            drain: drain.map(|r| (r, None)),
            note: match drain {
                Some(_) => "rebalance recommendation: draining (--on-rebalance drain)".to_string(),
                None => {
                    "rebalance recommendation: reported only (--on-rebalance ignore)".to_string()
                }
            },
        })
    }
}

/// The action and time of a spot notice, if it is the JSON EC2 writes.
fn parse_spot(body: &str) -> Option<(String, SystemTime)> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    let action = json.get("action")?.as_str()?.to_string();
    let time = humantime::parse_rfc3339_weak(json.get("time")?.as_str()?).ok()?;
    Some((action, time))
}

/// Checks that IMDS answers (a token and `instance-id`) within `bound`.
pub async fn probe(client: &ImdsClient, bound: Duration) -> Result<String, ImdsError> {
    let timeout = || ImdsError::Timeout {
        endpoint: client.endpoint().to_string(),
        path: "/latest/meta-data/instance-id".to_string(),
    };
    match tokio::time::timeout(bound, client.get("instance-id")).await {
        Ok(Ok(Some(id))) => Ok(id),
        Ok(Ok(None)) => Err(ImdsError::Status {
            endpoint: client.endpoint().to_string(),
            path: "/latest/meta-data/instance-id".to_string(),
            status: 404,
        }),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(timeout()),
    }
}

/// Reads IMDS every poll interval and sends drain requests to the supervisor.
pub struct Poller {
    client: ImdsClient,
    settings: NoticeSettings,
    interpreter: Interpreter,
    events: mpsc::Sender<Event>,
    status: watch::Sender<ImdsStatus>,
    /// Where the body of `scheduled::PATH` goes when it changes; `None`: not polled.
    scheduled: Option<watch::Sender<Option<String>>>,
    failing: Option<Failing>,
    rng: u64,
}

/// An ongoing IMDS outage, for rate-limited logging.
struct Failing {
    since: Instant,
    rounds: u32,
    last_logged: Instant,
}

impl Poller {
    pub fn new(
        client: ImdsClient,
        settings: NoticeSettings,
        events: mpsc::Sender<Event>,
        status: watch::Sender<ImdsStatus>,
    ) -> Self {
        let interpreter = Interpreter::new(settings.on_rebalance, settings.spot_margin);
        status.send_modify(|s| s.endpoint = client.endpoint().to_string());
        Poller {
            client,
            settings,
            interpreter,
            events,
            status,
            scheduled: None,
            failing: None,
            rng: seed(),
        }
    }

    /// Also polls EC2 scheduled events, sending each new body of `scheduled::PATH` to `to`.
    pub fn scheduled_events(mut self, to: watch::Sender<Option<String>>) -> Self {
        self.scheduled = Some(to);
        self
    }

    /// Polls until the task is dropped. With `probe_first`, a first round that cannot reach
    /// IMDS turns notices off with one warning (the guard is not on EC2).
    pub async fn run(mut self, probe_first: bool) {
        if probe_first && let Err(err) = probe(&self.client, AUTO_PROBE_BOUND).await {
            tracing::warn!(error = %err, "IMDS did not answer: scale-in and spot notices are off");
            return;
        }
        tracing::info!(
            endpoint = self.client.endpoint(),
            every = %format_duration(self.settings.poll),
            "watching IMDS for scale-in, spot and rebalance notices{}",
            if self.scheduled.is_some() { " and scheduled events" } else { "" }
        );
        loop {
            let ok = self.round().await;
            let pause = self.pause(ok);
            tokio::time::sleep(pause).await;
        }
    }

    /// One round: the notice paths at once (and the identity until it is known).
    async fn round(&mut self) -> bool {
        let need_identity = self.status.borrow().instance_id.is_none();
        let scheduled_too = self.scheduled.is_some();
        let (state, spot, rebalance, scheduled) = tokio::join!(
            self.client.get(LIFECYCLE_PATH),
            self.client.get(SPOT_PATH),
            self.client.get(REBALANCE_PATH),
            async {
                match scheduled_too {
                    true => self.client.get(scheduled::PATH).await,
                    false => Ok(None),
                }
            },
        );
        let now = SystemTime::now();
        let now_instant = Instant::now();
        let mut errors = Vec::new();
        let mut decisions = Vec::new();
        match state {
            Ok(v) => {
                if let Some(v) = &v {
                    self.status.send_modify(|s| {
                        s.lifecycle_state = Some(capped(v.trim(), VALUE_SHOWN).into_owned())
                    });
                }
                decisions.extend(self.interpreter.lifecycle(v.as_deref(), now));
            }
            Err(e) => errors.push(e),
        }
        match spot {
            Ok(v) => decisions.extend(self.interpreter.spot(v.as_deref(), now, now_instant)),
            Err(e) => errors.push(e),
        }
        match rebalance {
            Ok(v) => decisions.extend(self.interpreter.rebalance(v.as_deref(), now)),
            Err(e) => errors.push(e),
        }
        match scheduled {
            // A 404 says nothing (IMDS lists no events as `[]`): pending drains stay as they are.
            Ok(Some(body)) => self.hand_on_scheduled(body),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        for decision in decisions {
            self.act(decision).await;
        }
        if need_identity && errors.is_empty() {
            self.read_identity().await;
        }
        let ok = errors.is_empty();
        self.status.send_modify(|s| {
            s.last_poll = Some(now);
            if ok {
                s.last_ok = Some(now);
            }
            s.errors_total += errors.len() as u64;
            if let Some(e) = errors.first() {
                s.last_error = Some(e.to_string());
            }
        });
        self.log_health(errors.first());
        ok
    }

    async fn act(&mut self, decision: Decision) {
        let record = Record::NoticeSeen {
            kind: decision.record.kind,
            value: decision.record.value.clone(),
            drain: decision.drain.map(|(reason, _)| reason),
        }
        .json();
        match decision.drain {
            Some(_) => tracing::warn!(journal = %record, "{}", decision.note),
            None => tracing::info!(journal = %record, "{}", decision.note),
        }
        self.status
            .send_modify(|s| s.record_notice(decision.record.clone()));
        if let Some((reason, hard_deadline)) = decision.drain {
            let event = Event::Drain {
                reason,
                hard_deadline,
            };
            // The supervisor outlives this task; a closed channel means it is finishing anyway.
            let _ = self.events.send(event).await;
        }
    }

    /// Sends a scheduled-events body on, if it differs from the last one.
    fn hand_on_scheduled(&self, body: String) {
        if let Some(to) = &self.scheduled {
            to.send_if_modified(|last| {
                let new = last.as_deref() != Some(body.as_str());
                if new {
                    *last = Some(body);
                }
                new
            });
        }
    }

    async fn read_identity(&mut self) {
        let (id, region) = tokio::join!(
            self.client.get("instance-id"),
            self.client.get("placement/region")
        );
        if let (Ok(Some(id)), Ok(region)) = (id, region) {
            tracing::info!(instance_id = %id, region = region.as_deref().unwrap_or("?"), "on EC2");
            self.status.send_modify(|s| {
                s.instance_id = Some(id);
                s.region = region;
            });
        }
    }

    /// Logs the first error of an outage, then at most once a minute, then the recovery.
    fn log_health(&mut self, error: Option<&ImdsError>) {
        let now = Instant::now();
        match (error, &mut self.failing) {
            (Some(err), None) => {
                tracing::warn!(error = %err, "IMDS read failed; retrying (the agent is not affected)");
                self.failing = Some(Failing {
                    since: now,
                    rounds: 1,
                    last_logged: now,
                });
            }
            (Some(err), Some(f)) => {
                f.rounds += 1;
                if now.duration_since(f.last_logged) >= ERROR_LOG_EVERY {
                    f.last_logged = now;
                    tracing::warn!(
                        error = %err,
                        failed_rounds = f.rounds,
                        for_ = %format_duration(round_secs(now.duration_since(f.since))),
                        "IMDS still failing; retrying"
                    );
                }
            }
            (None, Some(f)) => {
                tracing::info!(
                    failed_rounds = f.rounds,
                    after = %format_duration(round_secs(now.duration_since(f.since))),
                    "IMDS answering again"
                );
                self.failing = None;
            }
            (None, None) => {}
        }
    }

    /// The poll interval with ±10 % jitter, doubled per failed round up to the backoff cap.
    ///
    /// The jitter is triangular (the sum of two uniform draws): gaps still range over ±10 % and
    /// average exactly one interval, so the request rate is one per path per interval, but long
    /// gaps are rare. A notice is then seen within 1.016 intervals at p99, where uniform jitter
    /// would give 1.037.
    fn pause(&mut self, ok: bool) -> Duration {
        let base = self.settings.poll;
        let backed_off = match (&self.failing, ok) {
            (Some(f), false) => {
                let factor = 1u32 << f.rounds.min(6);
                (base * factor).min((base * MAX_BACKOFF_POLLS).min(MAX_BACKOFF).max(base))
            }
            _ => base,
        };
        let jitter = (self.uniform() + self.uniform() - 1.0) * 0.1; // -0.1 ..= 0.1
        backed_off.mul_f64(1.0 + jitter)
    }

    /// A uniform draw in [0, 1) from a xorshift generator: pacing needs no better randomness.
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> (SystemTime, Instant) {
        (SystemTime::now(), Instant::now())
    }

    fn drains(d: &Option<Decision>) -> Option<DrainReason> {
        d.as_ref().and_then(|d| d.drain.map(|(r, _)| r))
    }

    #[test]
    fn lifecycle_states_table() {
        let (now, _) = t0();
        // (states in order, the drain each one requests)
        let cases: &[(&[&str], &[Option<DrainReason>])] = &[
            (
                &["InService", "Terminated"],
                &[None, Some(DrainReason::ScaleIn)],
            ),
            (
                &["InService", "Terminated", "Terminated"],
                &[None, Some(DrainReason::ScaleIn), None],
            ),
            (&["Warmed:Stopped"], &[None]),
            (
                &["Warmed:Stopped", "InService", "Warmed:Hibernated"],
                &[None, None, Some(DrainReason::WarmPool)],
            ),
            (
                &["InService", "Standby", "InService", "Detached"],
                &[None, None, None, None],
            ),
            (&["InService", "Exploding"], &[None, None]),
        ];
        for (states, want) in cases {
            let mut i = Interpreter::new(OnRebalance::Ignore, Duration::from_secs(10));
            let got: Vec<_> = states
                .iter()
                .map(|s| drains(&i.lifecycle(Some(s), now)))
                .collect();
            assert_eq!(&got, want, "{states:?}");
        }
        let mut i = Interpreter::new(OnRebalance::Ignore, Duration::from_secs(10));
        assert_eq!(i.lifecycle(None, now), None, "a 404 says nothing");
        assert!(i.lifecycle(Some("InService"), now).is_some());
        assert_eq!(
            i.lifecycle(Some("InService"), now),
            None,
            "repeats are not news"
        );
    }

    #[test]
    fn spot_deadline_is_the_notice_time_minus_the_margin() {
        let (now, at) = t0();
        let mut i = Interpreter::new(OnRebalance::Ignore, Duration::from_secs(10));
        let time = humantime::format_rfc3339_seconds(now + Duration::from_secs(120)).to_string();
        let body = format!("{{\"action\": \"terminate\", \"time\": \"{time}\"}}");
        let d = i.spot(Some(&body), now, at).expect("a notice");
        let (reason, kill_by) = d.drain.expect("a drain");
        assert_eq!(reason, DrainReason::SpotInterruption);
        let left = kill_by.expect("a hard deadline").duration_since(at);
        // Whole seconds in the notice: between 109 and 110 s after `now`.
        assert!(
            left > Duration::from_secs(108) && left <= Duration::from_secs(110),
            "{left:?}"
        );
        assert_eq!(
            i.spot(Some(&body), now, at),
            None,
            "the same notice is acted on once"
        );
    }

    #[test]
    fn an_unreadable_spot_notice_still_drains_with_two_minutes() {
        let (now, at) = t0();
        let mut i = Interpreter::new(OnRebalance::Ignore, Duration::from_secs(10));
        let d = i.spot(Some("<html>oops"), now, at).expect("a notice");
        let (_, kill_by) = d.drain.expect("a drain");
        assert_eq!(kill_by, Some(at + Duration::from_secs(110)));
        assert!(d.note.contains("unreadable"), "{}", d.note);
    }

    #[test]
    fn a_past_spot_time_leaves_no_time() {
        let (now, at) = t0();
        let mut i = Interpreter::new(OnRebalance::Ignore, Duration::from_secs(10));
        let d = i
            .spot(
                Some("{\"action\":\"stop\",\"time\":\"2020-01-01T00:00:00Z\"}"),
                now,
                at,
            )
            .expect("a notice");
        assert_eq!(d.drain, Some((DrainReason::SpotInterruption, Some(at))));
    }

    #[test]
    fn a_notice_that_changes_on_every_poll_keeps_a_bounded_history_and_capped_values() {
        let (now, _) = t0();
        let mut i = Interpreter::new(OnRebalance::Ignore, Duration::ZERO);
        let mut status = ImdsStatus::default();
        for n in 0..100 {
            let body = format!("{{\"noticeTime\": \"{n}\"}}");
            status.record_notice(i.rebalance(Some(&body), now).expect("new").record);
        }
        assert_eq!(status.notices.len(), NOTICES_KEPT);
        assert_eq!(status.notices_of(NoticeKind::Rebalance), 100);
        assert!(status.notices[NOTICES_KEPT - 1].value.contains("99"));
        let huge = "x".repeat(10 << 20);
        let d = i.lifecycle(Some(&huge), now).expect("new");
        assert!(
            d.record.value.len() < VALUE_SHOWN + 64,
            "{}",
            d.record.value.len()
        );
        assert!(d.note.len() < VALUE_SHOWN + 128, "{}", d.note.len());
        let d = i.spot(Some(&huge), now, Instant::now()).expect("new");
        assert!(d.record.value.len() < VALUE_SHOWN + 64);
    }

    #[test]
    fn rebalance_drains_only_when_asked() {
        let (now, _) = t0();
        let body = Some("{\"noticeTime\": \"2026-11-28T08:22:00Z\"}");
        let mut ignore = Interpreter::new(OnRebalance::Ignore, Duration::ZERO);
        let d = ignore.rebalance(body, now).expect("reported");
        assert_eq!(d.drain, None);
        assert_eq!(d.record.kind, NoticeKind::Rebalance);
        let mut drain = Interpreter::new(OnRebalance::Drain, Duration::ZERO);
        assert_eq!(
            drains(&drain.rebalance(body, now)),
            Some(DrainReason::Rebalance)
        );
        assert_eq!(drain.rebalance(body, now), None);
    }
}
