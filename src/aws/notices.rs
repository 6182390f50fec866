//! Polls IMDS for notices and turns each new one into a drain request for the supervisor. It
//! never dies of an IMDS failure: errors are logged (rate-limited) and retried with capped
//! backoff, and only a notice starts a drain.
//!
//! A notice source is a unit, as aws-node-termination-handler's `Monitor` is: one module per
//! IMDS path ([`Source`]: its path, its kind, what a read means, with no I/O, tested as a table),
//! listed once in [`REGISTRY`]. The [`Poller`] reads every registered path each round, paces,
//! logs and counts; the metrics' label table is [`KINDS`], taken from the registry. A new path
//! (or later an SQS or EventBridge source) is one module plus its line in [`REGISTRY`].
//!
//! One notice is counted and logged once: a body that changes on every read (AWS's own mock
//! recomputes spot `time` and rebalance `noticeTime` each request) is an update of the notice
//! already seen, logged at most once a minute and not counted again.

mod rebalance;
mod scheduled_events;
mod spot;
mod target_state;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::aws::imds::{ImdsClient, ImdsError};
use crate::aws::scheduled::Tracked;
use crate::config::settings::OnRebalance;
use crate::fmt::format_duration;
use crate::journal::Record;
use crate::machine::state::{DrainReason, Event};

pub use crate::journal::NoticeKind;

/// One entry of the registry: the kind a source reports and how it is made.
pub struct Registered {
    pub kind: NoticeKind,
    /// `None` when the source is off in this wiring.
    make: fn(&Wiring) -> Option<Box<dyn Source>>,
}

/// What the sources are made from.
pub struct Wiring {
    pub settings: NoticeSettings,
    /// Where scheduled-event bodies go; `None`: that path is not polled.
    pub scheduled: Option<watch::Sender<Option<String>>>,
}

/// Every notice source, in the order read, logged and reported: the one place a source is added.
pub const REGISTRY: [Registered; 4] = [
    Registered {
        kind: target_state::KIND,
        make: |_| Some(Box::new(target_state::TargetState::default())),
    },
    Registered {
        kind: spot::KIND,
        make: |w| Some(Box::new(spot::Spot::new(w.settings.spot_margin))),
    },
    Registered {
        kind: rebalance::KIND,
        make: |w| Some(Box::new(rebalance::Rebalance::new(w.settings.on_rebalance))),
    },
    Registered {
        kind: scheduled_events::KIND,
        make: |w| {
            let to = w.scheduled.clone()?;
            Some(Box::new(scheduled_events::ScheduledEvents::new(to)))
        },
    },
];

/// The kinds of the registered sources, in order: the label table of the notice counter.
pub const KINDS: [NoticeKind; REGISTRY.len()] = {
    let mut kinds = [NoticeKind::LifecycleState; REGISTRY.len()];
    let mut i = 0;
    while i < REGISTRY.len() {
        kinds[i] = REGISTRY[i].kind;
        i += 1;
    }
    kinds
};

/// The sources this wiring turns on, in registry order.
pub fn sources(wiring: &Wiring) -> Vec<Box<dyn Source>> {
    REGISTRY.iter().filter_map(|r| (r.make)(wiring)).collect()
}

/// One IMDS path watched for notices. What a read means is decided here, with no I/O; the
/// poller reads, logs, counts and sends the drain.
pub trait Source: Send + Sync {
    /// The kind of notice it reports (also its label in metrics and the journal).
    fn kind(&self) -> NoticeKind;
    /// The path under `/latest/meta-data/`.
    fn path(&self) -> &'static str;
    /// The value read (`None`: a 404) means this, if anything new.
    fn read(&mut self, value: Option<&str>, clock: Clock) -> Option<Decision>;
    /// Puts what the value says into the published status (the lifecycle state does).
    fn publish(&self, _value: &str, _status: &mut ImdsStatus) {}
}

/// The time of a read, on both clocks: the wall clock for notice times, the monotonic one for
/// deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

/// The longest pause between rounds while IMDS is failing: five poll intervals, at most 10 s,
/// so that a spot notice posted during an outage is still seen with most of its two minutes.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF_POLLS: u32 = 5;
/// How long `--imds auto` waits at start for IMDS before turning notices off. On EC2 IMDS
/// answers in milliseconds; elsewhere the agent is already running meanwhile.
const AUTO_PROBE_BOUND: Duration = Duration::from_secs(3);
/// How often a persisting IMDS failure, or a notice that keeps changing, is logged again.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);
/// The notices kept for `/status`, the latest ones: a body that changes on every poll (as a
/// broken IMDS may serve) must not grow the guard without bound.
pub const NOTICES_KEPT: usize = 16;
/// The most of a value read from IMDS that is logged or kept: a notice is a short JSON object, a
/// state one word; a 10 MB answer is shown as its start and its size.
pub const VALUE_SHOWN: usize = 512;
/// What a source reads in place of an answer past [`crate::aws::imds::MAX_BODY`]: a body it
/// cannot read, as garbage would be.
const TOO_LARGE: &str = "<an answer too large to read>";

/// The poller's settings.
#[derive(Debug, Clone)]
pub struct NoticeSettings {
    pub poll: Duration,
    pub on_rebalance: OnRebalance,
    pub spot_margin: Duration,
}

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
#[derive(Debug, Clone)]
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
    /// Notices seen since start, in the order of [`KINDS`] (the list keeps only the latest).
    pub notices_seen: [u64; KINDS.len()],
}

impl Default for ImdsStatus {
    fn default() -> Self {
        ImdsStatus {
            endpoint: String::new(),
            instance_id: None,
            region: None,
            lifecycle_state: None,
            last_poll: None,
            last_ok: None,
            errors_total: 0,
            last_error: None,
            notices: Vec::new(),
            scheduled_events: Vec::new(),
            notices_seen: [0; KINDS.len()],
        }
    }
}

impl ImdsStatus {
    /// Keeps `record` among the latest notices and counts it.
    pub fn record_notice(&mut self, record: NoticeRecord) {
        if let Some(i) = kind_index(record.kind) {
            self.notices_seen[i] += 1;
        }
        if self.notices.len() >= NOTICES_KEPT {
            let excess = self.notices.len() + 1 - NOTICES_KEPT;
            self.notices.drain(..excess);
        }
        self.notices.push(record);
    }

    /// Shows `record`, a new body of a notice already counted, in place of that notice's last
    /// one (or as the latest, if it was dropped from the list): not counted again.
    pub fn update_notice(&mut self, record: NoticeRecord) {
        match self
            .notices
            .iter_mut()
            .rev()
            .find(|n| n.kind == record.kind)
        {
            Some(last) => {
                last.value = record.value;
                last.seen_at = record.seen_at;
            }
            None => {
                if self.notices.len() >= NOTICES_KEPT {
                    self.notices.remove(0);
                }
                self.notices.push(record);
            }
        }
    }

    /// How many notices of `kind` were seen since start.
    pub fn notices_of(&self, kind: NoticeKind) -> u64 {
        kind_index(kind).map_or(0, |i| self.notices_seen[i])
    }
}

/// The place of `kind` in [`KINDS`]; `None` for a kind no source reports.
fn kind_index(kind: NoticeKind) -> Option<usize> {
    KINDS.iter().position(|k| *k == kind)
}

/// A decision about one notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub record: NoticeRecord,
    /// The drain to request, with the latest SIGKILL time for a spot interruption.
    pub drain: Option<(DrainReason, Option<Instant>)>,
    /// A line for the log.
    pub note: String,
    /// A new body of a notice already seen: not counted again, logged at most once a minute.
    pub update: bool,
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
    client: Arc<ImdsClient>,
    settings: NoticeSettings,
    sources: Vec<Box<dyn Source>>,
    events: mpsc::Sender<Event>,
    status: watch::Sender<ImdsStatus>,
    failing: Option<Failing>,
    /// When a notice or an update of each kind (in [`KINDS`] order) was last logged.
    update_logged: [Option<Instant>; KINDS.len()],
    /// Paths whose answer was too large to read, each logged once.
    too_large: Vec<&'static str>,
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
        status.send_modify(|s| s.endpoint = client.endpoint().to_string());
        let wiring = Wiring {
            settings: settings.clone(),
            scheduled: None,
        };
        Poller {
            client: Arc::new(client),
            sources: sources(&wiring),
            settings,
            events,
            status,
            failing: None,
            update_logged: [None; KINDS.len()],
            too_large: Vec::new(),
            rng: seed(),
        }
    }

    /// Also polls EC2 scheduled events, sending each new body of `scheduled::PATH` to `to`.
    pub fn scheduled_events(mut self, to: watch::Sender<Option<String>>) -> Self {
        let wiring = Wiring {
            settings: self.settings.clone(),
            scheduled: Some(to),
        };
        self.sources = sources(&wiring);
        self
    }

    /// Polls until the task is dropped. With `probe_first`, a first round that cannot reach
    /// IMDS turns notices off with one warning (the guard is not on EC2).
    pub async fn run(mut self, probe_first: bool) {
        if probe_first && let Err(err) = probe(&self.client, AUTO_PROBE_BOUND).await {
            tracing::warn!(error = %err, "IMDS did not answer: scale-in and spot notices are off");
            return;
        }
        let scheduled = self
            .sources
            .iter()
            .any(|s| s.kind() == NoticeKind::ScheduledEvent);
        tracing::info!(
            endpoint = self.client.endpoint(),
            every = %format_duration(self.settings.poll),
            "watching IMDS for scale-in, spot and rebalance notices{}",
            if scheduled { " and scheduled events" } else { "" }
        );
        loop {
            let ok = self.round().await;
            let pause = self.pause(ok);
            tokio::time::sleep(pause).await;
        }
    }

    /// Every registered path at once, answers in registry order.
    async fn read_all(&self) -> Vec<Result<Option<String>, ImdsError>> {
        let mut reads = JoinSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let (client, path) = (self.client.clone(), source.path());
            reads.spawn(async move { (i, client.get(path).await) });
        }
        let mut answers: Vec<_> = (0..self.sources.len()).map(|_| Ok(None)).collect();
        while let Some(done) = reads.join_next().await {
            // A read task cannot panic short of a bug in the client; it then says nothing.
            if let Ok((i, answer)) = done {
                answers[i] = answer;
            }
        }
        answers
    }

    /// One round: the notice paths at once (and the identity until it is known).
    async fn round(&mut self) -> bool {
        let need_identity = self.status.borrow().instance_id.is_none();
        let answers = self.read_all().await;
        let clock = Clock::now();
        let mut errors = Vec::new();
        let mut decisions = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            let value = match answer {
                Ok(value) => value,
                // Not an outage: this path's answer cannot be read, as garbage cannot.
                Err(ImdsError::TooLarge { path, .. }) => {
                    self.say_too_large(i, &path);
                    Some(TOO_LARGE.to_string())
                }
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let source = &mut self.sources[i];
            if let Some(v) = &value {
                self.status.send_modify(|s| source.publish(v, s));
            }
            decisions.extend(source.read(value.as_deref(), clock));
        }
        for decision in decisions {
            self.act(decision).await;
        }
        if need_identity && errors.is_empty() {
            self.read_identity().await;
        }
        let ok = errors.is_empty();
        self.status.send_modify(|s| {
            s.last_poll = Some(clock.wall);
            if ok {
                s.last_ok = Some(clock.wall);
            }
            s.errors_total += errors.len() as u64;
            if let Some(e) = errors.first() {
                s.last_error = Some(e.to_string());
            }
        });
        self.log_health(errors.first());
        ok
    }

    /// Logs once per path that its answer is too large, and counts each such read as an error.
    fn say_too_large(&mut self, i: usize, path: &str) {
        let error = ImdsError::TooLarge {
            endpoint: self.client.endpoint().to_string(),
            path: path.to_string(),
        };
        let source = self.sources[i].path();
        if !self.too_large.contains(&source) {
            self.too_large.push(source);
            tracing::warn!(error = %error, "read as an unreadable body (logged once for this path)");
        }
        self.status.send_modify(|s| {
            s.errors_total += 1;
            s.last_error = Some(error.to_string());
        });
    }

    async fn act(&mut self, decision: Decision) {
        if !decision.update || self.update_due(decision.record.kind) {
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
        }
        if decision.update {
            self.status
                .send_modify(|s| s.update_notice(decision.record.clone()));
        } else {
            // Its updates wait a minute from here.
            if let Some(i) = kind_index(decision.record.kind) {
                self.update_logged[i] = Some(Instant::now());
            }
            self.status
                .send_modify(|s| s.record_notice(decision.record.clone()));
        }
        if let Some((reason, hard_deadline)) = decision.drain {
            let event = Event::Drain {
                reason,
                hard_deadline,
            };
            // The supervisor outlives this task; a closed channel means it is finishing anyway.
            let _ = self.events.send(event).await;
        }
    }

    /// Whether an update of `kind` is logged now: at most once a minute per kind.
    fn update_due(&mut self, kind: NoticeKind) -> bool {
        let Some(i) = kind_index(kind) else {
            return true;
        };
        let now = Instant::now();
        let due = self.update_logged[i].is_none_or(|at| now.duration_since(at) >= ERROR_LOG_EVERY);
        if due {
            self.update_logged[i] = Some(now);
        }
        due
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

    #[test]
    fn the_registry_lists_each_kind_once_and_every_source_reports_its_own() {
        let (to, _rx) = watch::channel(None);
        let wiring = Wiring {
            settings: NoticeSettings {
                poll: Duration::from_secs(2),
                on_rebalance: OnRebalance::Ignore,
                spot_margin: Duration::ZERO,
            },
            scheduled: Some(to),
        };
        let all = sources(&wiring);
        let kinds: Vec<_> = all.iter().map(|s| s.kind()).collect();
        assert_eq!(kinds, KINDS, "each made source reports its registered kind");
        for (i, kind) in KINDS.iter().enumerate() {
            assert_eq!(kind_index(*kind), Some(i), "{} once", kind.as_str());
        }
        let mut paths: Vec<_> = all.iter().map(|s| s.path()).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), KINDS.len(), "one path each");
        let unwired = Wiring {
            scheduled: None,
            ..wiring
        };
        assert!(
            sources(&unwired)
                .iter()
                .all(|s| s.kind() != NoticeKind::ScheduledEvent),
            "scheduled events are read only when something acts on them"
        );
    }

    #[test]
    fn a_notice_that_changes_on_every_poll_keeps_a_bounded_history_and_capped_values() {
        let clock = Clock::now();
        let mut status = ImdsStatus::default();
        for n in 0..100 {
            status.record_notice(NoticeRecord {
                kind: NoticeKind::Rebalance,
                value: format!("{{\"noticeTime\": \"{n}\"}}"),
                seen_at: clock.wall,
                drain: None,
            });
        }
        assert_eq!(status.notices.len(), NOTICES_KEPT);
        assert_eq!(status.notices_of(NoticeKind::Rebalance), 100);
        let mut updated = status.clone();
        updated.update_notice(NoticeRecord {
            kind: NoticeKind::Rebalance,
            value: "new".to_string(),
            seen_at: clock.wall,
            drain: None,
        });
        assert_eq!(updated.notices.len(), NOTICES_KEPT, "shown in place");
        assert_eq!(updated.notices[NOTICES_KEPT - 1].value, "new");
        assert_eq!(
            updated.notices_of(NoticeKind::Rebalance),
            100,
            "not counted"
        );
        assert!(status.notices[NOTICES_KEPT - 1].value.contains("99"));
        let huge = "x".repeat(10 << 20);
        let mut lifecycle = target_state::TargetState::default();
        let d = lifecycle.read(Some(&huge), clock).expect("new");
        assert!(
            d.record.value.len() < VALUE_SHOWN + 64,
            "{}",
            d.record.value.len()
        );
        assert!(d.note.len() < VALUE_SHOWN + 128, "{}", d.note.len());
        let mut spot = spot::Spot::new(Duration::ZERO);
        let d = spot.read(Some(&huge), clock).expect("new");
        assert!(d.record.value.len() < VALUE_SHOWN + 64);
    }
}
