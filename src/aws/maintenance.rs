//! EC2 scheduled events acted on, as `--on-maintenance` says: `replace` marks the instance
//! Unhealthy so that its group replaces it through the normal, drained termination; `drain`
//! drains the agent at NotBefore minus `--maintenance-margin`, a timer that a canceled (or
//! vanished) event calls off; `report` only logs and reports.
//!
//! What each event calls for is decided in [`scheduled`](crate::aws::scheduled), with no I/O; this
//! is the acting around it: the `SetInstanceHealth` call, the timer, the reports. An unreadable
//! body is logged, rate-limited, and changes nothing: it can neither start nor cancel a drain.
//!
//! The instance is marked Unhealthy once, however many events call for it (32 listed at once,
//! or ids that change on every read): the mark is on the instance, not on an event, and it
//! holds until the group replaces the instance. A refused mark is not asked again: every later
//! event falls back to `drain` at once.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::aws::api::CallError;
use crate::aws::context::{ContextError, SharedAws};
use crate::aws::health_status;
use crate::aws::notices::{ImdsStatus, NoticeRecord};
use crate::aws::scheduled::{
    Action, PATH, ParseError, Planner, ScheduledEvent, Step, format_event_time, parse_events,
};
use crate::config::settings::OnMaintenance;
use crate::fmt::{format_duration, rfc3339};
use crate::journal::{MaintenanceStep, NoticeKind, Record};
use crate::machine::state::{DrainReason, Event};

/// How long transient `SetInstanceHealth` failures (throttling, 5xx) are retried before the
/// event is handled as with `drain`.
const REPLACE_RETRY_WINDOW: Duration = Duration::from_secs(120);
/// The timer re-reads the wall clock at least this often, so that a clock step cannot make a
/// drain late by more than this.
const TIMER_STEP: Duration = Duration::from_secs(60);
/// How often a persisting unreadable body is logged again.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// The scheduled-event settings.
#[derive(Debug, Clone, Copy)]
pub struct MaintenanceSettings {
    pub mode: OnMaintenance,
    pub margin: Duration,
}

/// Why the instance could not be marked Unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplaceError {
    #[error("no AWS context: {0}")]
    Context(ContextError),
    #[error("the instance profile lacks autoscaling:SetInstanceHealth")]
    Denied,
    #[error("SetInstanceHealth failed: {0}")]
    Failed(String),
}

/// Acts on the bodies of [`PATH`] that the poller reads (a new one each time it changes), until
/// the task is dropped or the poller is gone. `aws` is needed by `replace` only.
pub async fn run(
    settings: MaintenanceSettings,
    bodies: watch::Receiver<Option<String>>,
    events: mpsc::Sender<Event>,
    status: watch::Sender<ImdsStatus>,
    aws: Option<Arc<SharedAws>>,
) {
    let actor = Actor {
        planner: Planner::new(settings.mode, settings.margin),
        bodies,
        events,
        status,
        aws,
        mark: Mark::Unmarked,
        replacing: JoinSet::new(),
        unreadable: None,
        drained_for: Vec::new(),
    };
    actor.run().await;
}

/// The instance's Unhealthy mark: asked for once, whatever the number of events.
#[derive(Debug)]
enum Mark {
    Unmarked,
    /// `SetInstanceHealth` is in flight for these events.
    Asking(Vec<String>),
    /// The group accepted the mark; it replaces the instance.
    Marked,
    /// The mark was refused or impossible (the reason, for later events' lines).
    Refused(ReplaceError),
}

/// The I/O around the [`Planner`].
struct Actor {
    planner: Planner,
    bodies: watch::Receiver<Option<String>>,
    events: mpsc::Sender<Event>,
    status: watch::Sender<ImdsStatus>,
    aws: Option<Arc<SharedAws>>,
    /// Where the instance's Unhealthy mark stands.
    mark: Mark,
    /// The one `SetInstanceHealth` call, while in flight.
    replacing: JoinSet<Result<(), ReplaceError>>,
    /// When unreadable bodies began, and when that was last logged.
    unreadable: Option<(Instant, Instant)>,
    /// The events whose drain was started: one canceled (or gone) then calls the drain off.
    drained_for: Vec<String>,
}

impl Actor {
    async fn run(mut self) {
        loop {
            // The timer wakes at the next drain, or sooner to re-read the wall clock.
            let wait = self.planner.next_drain().map(|at| {
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .min(TIMER_STEP)
            });
            tokio::select! {
                changed = self.bodies.changed() => {
                    if changed.is_err() {
                        return; // the poller is gone: nothing more will be read
                    }
                    let body = self.bodies.borrow_and_update().clone();
                    if let Some(body) = body {
                        self.read(&body);
                    }
                }
                Some(done) = self.replacing.join_next(), if !self.replacing.is_empty() => {
                    let result = done.unwrap_or_else(|e| Err(ReplaceError::Failed(e.to_string())));
                    self.mark_answered(result);
                }
                _ = tokio::time::sleep(wait.unwrap_or(TIMER_STEP)), if wait.is_some() => {}
            }
            self.fire_due().await;
            let tracked = self.planner.tracked().to_vec();
            self.status.send_modify(|s| s.scheduled_events = tracked);
        }
    }

    fn read(&mut self, body: &str) {
        match parse_events(body) {
            Err(err) => self.log_unreadable(&err),
            Ok(list) => {
                if let Some((since, _)) = self.unreadable.take() {
                    tracing::info!(after = %format_duration(Duration::from_secs(since.elapsed().as_secs())), "scheduled events readable again");
                }
                for step in self.planner.read(&list) {
                    self.act(step);
                }
            }
        }
    }

    /// The first unreadable body, then at most one line a minute while they last.
    fn log_unreadable(&mut self, err: &ParseError) {
        let now = Instant::now();
        let log = match &mut self.unreadable {
            None => {
                self.unreadable = Some((now, now));
                true
            }
            Some((_, last)) if now.duration_since(*last) >= ERROR_LOG_EVERY => {
                *last = now;
                true
            }
            Some(_) => false,
        };
        if log {
            tracing::warn!(error = %err, "cannot read IMDS {PATH}; ignored (it starts and cancels no drain)");
        }
    }

    fn act(&mut self, step: Step) {
        match step {
            Step::New { event, action } => self.new_event(event, action),
            Step::Ignored { event } => tracing::info!(
                id = %event.id,
                code = %event.code_text,
                "scheduled event is {}: nothing to do",
                event.state.as_str()
            ),
            Step::Over {
                event,
                why,
                drain_canceled: true,
            } => {
                let record = scheduled_record(&event, MaintenanceStep::DrainCanceled, None);
                tracing::info!(id = %event.id, code = %event.code_text, journal = %record.json(), "scheduled event {}: the drain planned for it is called off", why.as_str());
            }
            Step::Over { event, why, .. } => {
                tracing::info!(id = %event.id, code = %event.code_text, "scheduled event {}", why.as_str());
                self.call_off(&event.id, why);
            }
        }
    }

    fn new_event(&mut self, event: ScheduledEvent, action: Action) {
        let value = format!(
            "{} {} {} NotBefore {}",
            event.code_text,
            event.id,
            event.state.as_str(),
            format_event_time(event.not_before)
        );
        let drain = matches!(action, Action::Drain { .. }).then_some(DrainReason::Maintenance);
        let record = Record::NoticeSeen {
            kind: NoticeKind::ScheduledEvent,
            value: value.clone(),
            drain,
        }
        .json();
        let what = match action {
            Action::Report => "reported only (--on-maintenance report)".to_string(),
            Action::Replace { .. } if matches!(self.mark, Mark::Marked) => "the instance is marked Unhealthy already: its group replaces it (--on-maintenance replace)".to_string(),
            Action::Replace { .. } => "marking the instance Unhealthy so that its group replaces it (--on-maintenance replace)".to_string(),
            Action::Drain { at } => format!(
                "the agent drains at {} (NotBefore minus --maintenance-margin)",
                rfc3339(at)
            ),
        };
        tracing::warn!(id = %event.id, code = %event.code_text, not_before = %format_event_time(event.not_before), journal = %record, "scheduled event: {what}");
        self.status.send_modify(|s| {
            s.record_notice(NoticeRecord {
                kind: NoticeKind::ScheduledEvent,
                value,
                seen_at: SystemTime::now(),
                drain,
            })
        });
        if let Action::Replace { .. } = action {
            self.ask_mark(event.id);
        }
    }

    /// Marks the instance Unhealthy for event `id`: one call for the instance, whatever the
    /// number of events; an event after the answer shares it.
    fn ask_mark(&mut self, id: String) {
        match &mut self.mark {
            Mark::Unmarked => {
                let aws = self.aws.clone();
                self.replacing.spawn(async move { replace(aws).await });
                self.mark = Mark::Asking(vec![id]);
            }
            Mark::Asking(ids) => ids.push(id),
            // Said on the event's own line.
            Mark::Marked => self.planner.replaced(&id),
            Mark::Refused(err) => {
                let err = err.clone();
                self.replaced(&id, Err(err));
            }
        }
    }

    /// The answer to the one `SetInstanceHealth` call, for every event that waited on it.
    fn mark_answered(&mut self, result: Result<(), ReplaceError>) {
        let waiting = match std::mem::replace(&mut self.mark, Mark::Unmarked) {
            Mark::Asking(ids) => ids,
            _ => Vec::new(),
        };
        self.mark = match &result {
            Ok(()) => Mark::Marked,
            Err(err) => Mark::Refused(err.clone()),
        };
        for id in waiting {
            self.replaced(&id, result.clone());
        }
    }

    fn replaced(&mut self, id: &str, result: Result<(), ReplaceError>) {
        match result {
            Ok(()) => {
                self.planner.replaced(id);
                let code = self.code_of(id);
                let record = Record::ScheduledEvent {
                    event_id: id.to_string(),
                    code,
                    step: MaintenanceStep::MarkedUnhealthy,
                    drain_at: self.planner.next_drain().map(rfc3339),
                };
                tracing::info!(id, journal = %record.json(), "marked the instance Unhealthy (SetInstanceHealth): its group replaces it, and the agent drains on that scale-in");
            }
            Err(err) => match self.planner.refused(id) {
                Some(at) => {
                    let record = Record::ScheduledEvent {
                        event_id: id.to_string(),
                        code: self.code_of(id),
                        step: MaintenanceStep::FellBack,
                        drain_at: Some(rfc3339(at)),
                    };
                    tracing::warn!(id, error = %err, journal = %record.json(), "cannot have the group replace the instance ({err}); as with --on-maintenance drain, the agent drains at {}", rfc3339(at));
                }
                None => {
                    tracing::info!(id, error = %err, "cannot have the group replace the instance; the event is over anyway")
                }
            },
        }
    }

    fn code_of(&self, id: &str) -> String {
        self.planner
            .tracked()
            .iter()
            .find(|t| t.event.id == id)
            .map(|t| t.event.code_text.clone())
            .unwrap_or_default()
    }

    /// An event whose drain was started is canceled or gone: the drain is called off (the
    /// supervisor ignores it once the agent has heard of the drain). A completed event is not:
    /// the maintenance happened.
    fn call_off(&mut self, id: &str, why: crate::aws::scheduled::Over) {
        let Some(i) = self.drained_for.iter().position(|d| d == id) else {
            return;
        };
        self.drained_for.remove(i);
        if why == crate::aws::scheduled::Over::Completed || !self.drained_for.is_empty() {
            return;
        }
        // The supervisor outlives this task; a full or closed queue means it is busy finishing.
        let _ = self
            .events
            .try_send(Event::DrainCalledOff(DrainReason::Maintenance));
    }

    /// Drains due now start now: one drain for however many events are due.
    async fn fire_due(&mut self) {
        let due = self.planner.due(SystemTime::now());
        if due.is_empty() {
            return;
        }
        for event in &due {
            self.drained_for.push(event.id.clone());
            let record = scheduled_record(event, MaintenanceStep::Draining, None);
            tracing::warn!(id = %event.id, code = %event.code_text, not_before = %format_event_time(event.not_before), journal = %record.json(), "scheduled event is near: draining the agent (reason maintenance)");
        }
        let drain = Event::Drain {
            reason: DrainReason::Maintenance,
            hard_deadline: None,
            deregister: false,
        };
        // The supervisor outlives this task; a closed channel means it is finishing anyway.
        let _ = self.events.send(drain).await;
    }
}

fn scheduled_record(
    event: &ScheduledEvent,
    step: MaintenanceStep,
    drain_at: Option<SystemTime>,
) -> Record {
    Record::ScheduledEvent {
        event_id: event.id.clone(),
        code: event.code_text.clone(),
        step,
        drain_at: drain_at.map(rfc3339),
    }
}

/// Marks the instance Unhealthy, retrying transient failures for [`REPLACE_RETRY_WINDOW`].
async fn replace(aws: Option<Arc<SharedAws>>) -> Result<(), ReplaceError> {
    let Some(aws) = aws else {
        return Err(ReplaceError::Failed("the AWS context is off".to_string()));
    };
    let ctx = aws.get().await.map_err(ReplaceError::Context)?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        match health_status::mark_unhealthy(&ctx, aws.board()).await {
            Ok(()) => return Ok(()),
            Err(CallError::Denied(_)) => return Err(ReplaceError::Denied),
            Err(CallError::Retry(text)) if started.elapsed() + delay < REPLACE_RETRY_WINDOW => {
                tracing::debug!(error = %text, retry_in = ?delay, "SetInstanceHealth failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(other) => return Err(ReplaceError::Failed(other.text().to_string())),
        }
    }
}
