//! The termination hook once the agent is gone: agree with the other guards on this host who
//! completes it (the last agent out), wait for the instance's wait state however late it comes,
//! then `CompleteLifecycleAction`.
//!
//! With a load balancer the group deregisters the instance first and only then enters
//! `Terminating:Wait` (see [`wait_state`]); until then "No active Lifecycle Action found" is the
//! expected answer. The guard tries the completion at once (the wait state has usually begun),
//! and on "no active action" looks at the instance's state once: deregistering means keep trying
//! on a growing, jittered schedule (at least every 12 s) up to the wait bound, re-reading the
//! state once a minute; no termination under way means the old short window, then nothing to
//! complete; past the wait state means nothing to complete at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::aws::api::CallError;
use crate::aws::backoff;
use crate::aws::hook_calls::{self, HookApi, set_terminate};
use crate::aws::status::LifecycleBoard;
use crate::aws::wait_state::{self, Stage};
use crate::config::settings::HookResult;
use crate::fmt::format_duration;
use crate::hosthooks::{Decision, Finished, HooksDirError, Registration};
use crate::journal::{Awaiting, Record};
use crate::model::HookState;
use crate::model::lifecycle::AwaitingStatus;

/// A registration shared with the blocking threads that read and write the hooks directory.
pub type Shared = Arc<Mutex<Registration>>;

/// What a guard waits for while the hooks directory cannot be read, as `/status` shows it.
const UNREADABLE: &str = "unknown: the hooks directory cannot be read";
/// How often a guard whose agent is gone looks whether the other guards' agents are gone too.
const GUARDS_EVERY: Duration = Duration::from_secs(1);
/// While deregistering, the instance's state is read again at least this often (it may leave
/// for good, detached or completed by someone else).
const RELOOK_EVERY: Duration = Duration::from_secs(60);

/// Runs a hooks-directory step on a blocking thread (the directory lock may be held a moment by
/// another guard).
pub async fn on_host<T: Send + 'static>(
    reg: &Shared,
    step: impl FnOnce(&mut Registration) -> Result<T, HooksDirError> + Send + 'static,
) -> Result<T, HooksDirError> {
    let reg = reg.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut guard = reg.lock().unwrap_or_else(|e| e.into_inner());
        step(&mut guard)
    })
    .await;
    match joined {
        Ok(answer) => answer,
        Err(err) => Err(HooksDirError::Io {
            path: std::path::PathBuf::from("(hooks dir task)"),
            source: std::io::Error::other(err.to_string()),
        }),
    }
}

/// What the termination's work knows when the agent is gone.
pub struct Gone<'a> {
    pub api: &'a HookApi,
    pub board: &'a LifecycleBoard,
    pub hook: &'a str,
    /// The agent's result (`result_for` its exit).
    pub result: HookResult,
    /// This guard drained for a drain that ends the instance.
    pub terminating: bool,
    /// When that drain began (the wait bound counts from it).
    pub drain_started: Option<Instant>,
    /// The instance was already seen in its wait state while the agent drained.
    pub wait_seen: bool,
    /// A spot interruption only: the group may hold no action at all; keep the old short window.
    pub spot: bool,
    pub registration: Option<Shared>,
    /// The guard stays once the hook is done (a warm-pool return): its lines say so.
    pub guard_stays: bool,
}

impl Gone<'_> {
    /// Decides with the other guards, waits, completes; returns the hook's final state.
    pub async fn finish(self) -> HookState {
        let bound_at = self.bound_at();
        let decision = match &self.registration {
            Some(reg) => {
                let (result, terminating) = (self.result, self.terminating);
                on_host(reg, move |r| r.agent_gone(result, terminating)).await
            }
            None if self.terminating => Ok(Decision::Complete {
                result: self.result,
                because: Vec::new(),
            }),
            None => Ok(Decision::NotNeeded),
        };
        // Whether this guard's own word (its agent gone, with its result) is in the directory.
        let recorded = decision.is_ok();
        let decision = match decision {
            Ok(decision) => decision,
            Err(err) => {
                // Completing as if alone could end the instance under another guard's agent
                // that still drains: lost work is worse than an instance held until the hook's
                // timeout. Keep asking, as while other guards' agents run, up to the bound.
                tracing::error!(hook = self.hook, error = %err, "lifecycle: cannot read the hooks directory; trying again until it can be read (the hook is not completed blind: another guard's agent may still run)");
                Decision::Wait {
                    others: vec![UNREADABLE.to_string()],
                }
            }
        };
        let (result, because) = match self.after_others(decision, recorded, bound_at).await {
            Some(go) => go,
            None => return self.hub_state(),
        };
        self.board.update(|l| l.awaiting = None);
        if !because.is_empty() {
            tracing::info!(hook = self.hook, because = %because.join(", "), "lifecycle: ABANDON, for an unclean exit on this host");
        }
        tracing::info!(
            hook = self.hook,
            result = result.as_str(),
            "lifecycle: the agents on this host are gone; completing the termination hook"
        );
        set_terminate(self.board, |h| h.state = HookState::Completing);
        let state = if self.spot {
            self.api.complete(self.board, self.hook, result, true).await
        } else {
            self.complete_when_waiting(result, bound_at).await
        };
        self.board.update(|l| l.awaiting = None);
        set_terminate(self.board, |h| {
            h.state = state;
            h.result = Some(result);
        });
        if let Some(reg) = &self.registration {
            let done = state.as_str();
            if let Err(err) = on_host(reg, move |r| r.finish(done, Some(result))).await {
                tracing::warn!(error = %err, "lifecycle: cannot record the hook's end in the hooks directory");
            }
        }
        state
    }

    fn bound_at(&self) -> Instant {
        let bound = wait_state::wait_bound(self.api.hook_timeout());
        let from = self.drain_started.unwrap_or_else(Instant::now);
        from.checked_add(bound).unwrap_or(from)
    }

    fn hub_state(&self) -> HookState {
        self.board
            .get()
            .terminate
            .as_ref()
            .map_or(HookState::Waiting, |h| h.state)
    }

    /// Waits while other guards' agents run, or while the hooks directory cannot be read; `Some`
    /// when this guard is to complete the hook. `recorded`: this guard's agent_gone is written;
    /// until it is, each try writes it again (a decision without it would not count this guard's
    /// drain, and find nothing to complete).
    async fn after_others(
        &self,
        mut decision: Decision,
        mut recorded: bool,
        bound_at: Instant,
    ) -> Option<(HookResult, Vec<String>)> {
        let since = SystemTime::now();
        let mut shown: Vec<String> = Vec::new();
        loop {
            match decision {
                Decision::Complete { result, because } => return Some((result, because)),
                Decision::NotNeeded => return None,
                Decision::Done(finished) => {
                    self.left_to_others(&finished);
                    return None;
                }
                Decision::Wait { others } => {
                    if others != shown {
                        self.await_others(&others, since);
                        shown = others;
                    }
                }
            }
            if Instant::now() >= bound_at {
                tracing::error!(hook = self.hook, others = %shown.join(", "), "lifecycle: gave up waiting for the other guards on this host; the hook runs to its timeout");
                set_terminate(self.board, |h| h.state = HookState::GaveUp);
                return None;
            }
            tokio::time::sleep(backoff::within(GUARDS_EVERY)).await;
            let reg = self.registration.as_ref()?;
            let step = if recorded {
                on_host(reg, Registration::termination).await
            } else {
                let (result, terminating) = (self.result, self.terminating);
                on_host(reg, move |r| r.agent_gone(result, terminating)).await
            };
            decision = match step {
                Ok(d) => {
                    recorded = true;
                    d
                }
                Err(err) => {
                    if shown.first().map(String::as_str) != Some(UNREADABLE) {
                        tracing::warn!(error = %err, "lifecycle: cannot read the hooks directory (will try again)");
                    }
                    Decision::Wait {
                        others: vec![UNREADABLE.to_string()],
                    }
                }
            };
        }
    }

    fn await_others(&self, others: &[String], since: SystemTime) {
        let detail = others.join(", ");
        let record = Record::HookAwaiting {
            hook: self.hook.to_string(),
            awaiting: Awaiting::OtherGuards,
            detail: detail.clone(),
        };
        let status = AwaitingStatus {
            what: Awaiting::OtherGuards,
            since,
            detail,
        };
        tracing::info!(hook = self.hook, journal = %record.json(), "lifecycle: the agent is gone; {}", status.text());
        self.board.update(|l| l.awaiting = Some(status));
        set_terminate(self.board, |h| h.state = HookState::Awaiting);
    }

    fn left_to_others(&self, finished: &Finished) {
        let record = Record::HookLeftToOthers {
            hook: self.hook.to_string(),
            result: self.result,
            others: vec![finished.by.clone()],
        };
        let result = finished.result.map_or("-", HookResult::as_str);
        tracing::info!(
            hook = self.hook,
            journal = %record.json(),
            "lifecycle: termination hook {} by {} ({result}); {}",
            finished.state,
            finished.by,
            self.then()
        );
        self.board.update(|l| l.awaiting = None);
        set_terminate(self.board, |h| {
            h.state = HookState::LeftToOthers;
            h.result = finished.result;
        });
    }

    /// Completes the hook as soon as the instance is in its wait state, up to `bound_at`.
    async fn complete_when_waiting(&self, result: HookResult, bound_at: Instant) -> HookState {
        let started = Instant::now();
        let drain_started = self.drain_started.unwrap_or(started);
        let mut waiting = Waiting::new(self.wait_seen);
        loop {
            let answer = if waiting.probing() {
                self.api.complete_probe(self.board, self.hook, result).await
            } else {
                self.api.complete_once(self.board, self.hook, result).await
            };
            let failure = match answer {
                Ok(()) => return self.completed(result, started),
                Err(failure @ CallError::NoAction(_)) => failure,
                // Throttled (or failing) through a whole retry window: the account is saturated,
                // not the hook gone. Keep trying, paced, up to the wait bound.
                Err(CallError::Retry(text)) if Instant::now() < bound_at => {
                    tracing::debug!(hook = self.hook, error = %text, "lifecycle: the completion keeps being throttled; trying again");
                    let since = Instant::now().saturating_duration_since(drain_started);
                    tokio::time::sleep(wait_state::next_look(since)).await;
                    continue;
                }
                Err(failure) => return hook_calls::refused(self.hook, &failure, started.elapsed()),
            };
            let now = Instant::now();
            if waiting.should_look(now) {
                waiting.looked(now, self.api.look(self.board).await);
            }
            let next = match waiting.next(now, self.api.no_action_window(), bound_at, drain_started)
            {
                Next::Retry(after) => after,
                Next::NothingToComplete(why) => return self.nothing(&failure, why),
                Next::TooLate => return self.too_late(bound_at, drain_started),
            };
            if let Some(stage) = waiting.fresh_stage() {
                self.show_stage(stage, drain_started);
            }
            tokio::time::sleep(next).await;
        }
    }

    fn completed(&self, result: HookResult, started: Instant) -> HookState {
        let waited = started.elapsed();
        if waited >= Duration::from_secs(1) {
            tracing::info!(hook = self.hook, result = result.as_str(), waited = %format_duration(Duration::from_secs(waited.as_secs())), "lifecycle: hook completed, once the instance was in its wait state; {}", self.then());
        } else {
            tracing::info!(
                hook = self.hook,
                result = result.as_str(),
                "lifecycle: hook completed; {}",
                self.then()
            );
        }
        HookState::Completed
    }

    /// What the guard does once the hook is done.
    fn then(&self) -> &'static str {
        if self.guard_stays {
            "the guard stays, to start the agent again when the instance is back in service"
        } else {
            "the guard exits with the agent's status"
        }
    }

    fn nothing(&self, failure: &CallError, why: Option<String>) -> HookState {
        match why {
            Some(state) => {
                tracing::info!(hook = self.hook, state = %state, "lifecycle: the instance is past its wait state without this guard ({state}); nothing to complete");
                HookState::NothingToComplete
            }
            None => hook_calls::no_action(self.hook, failure, false),
        }
    }

    fn too_late(&self, bound_at: Instant, drain_started: Instant) -> HookState {
        let waited = bound_at.saturating_duration_since(drain_started);
        tracing::error!(hook = self.hook, waited = %format_duration(Duration::from_secs(waited.as_secs())), "lifecycle: gave up: the instance never entered its wait state within the bound (the longest deregistration delay plus the hook's timeout)");
        HookState::GaveUp
    }

    fn show_stage(&self, stage: &Stage, drain_started: Instant) {
        let since = SystemTime::now()
            .checked_sub(drain_started.elapsed())
            .unwrap_or_else(SystemTime::now);
        let status = AwaitingStatus {
            what: Awaiting::WaitState,
            since,
            detail: stage.detail(),
        };
        let record = Record::HookAwaiting {
            hook: self.hook.to_string(),
            awaiting: Awaiting::WaitState,
            detail: status.detail.clone(),
        };
        tracing::info!(hook = self.hook, journal = %record.json(), "lifecycle: {}", status.text());
        self.board.update(|l| l.awaiting = Some(status));
        set_terminate(self.board, |h| h.state = HookState::Awaiting);
    }
}

/// What to do after a "no active action".
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// Try the completion again after this long.
    Retry(Duration),
    /// Give up: nothing to complete (the state that says so, if one did).
    NothingToComplete(Option<String>),
    /// Give up: the wait state never came within the bound.
    TooLate,
}

/// What the completion knows of the instance's state between tries: pure, so its rules are
/// tested as a table.
#[derive(Debug)]
struct Waiting {
    /// The last stage read, and when.
    stage: Option<(Stage, Instant)>,
    /// The stage read last has not been shown yet.
    fresh: bool,
    /// The state cannot be read (no permission, or the API keeps failing): keep trying the
    /// completion on the schedule, up to the bound.
    blind: bool,
    /// Since when "no active action" has come with no sign that the wait state is ahead.
    no_action_since: Option<Instant>,
    /// Delay of the short window's next retry.
    short_delay: Duration,
}

impl Waiting {
    fn new(wait_seen: bool) -> Waiting {
        let now = Instant::now();
        Waiting {
            stage: wait_seen.then(|| (Stage::Waiting("Terminating:Wait".to_string()), now)),
            fresh: false,
            blind: false,
            no_action_since: None,
            short_delay: Duration::from_millis(200),
        }
    }

    /// Look (again) at the state: never yet, or deregistering for a minute since the last look,
    /// or at the end of the short window.
    fn should_look(&self, now: Instant) -> bool {
        match &self.stage {
            None => !self.blind,
            Some((Stage::Deregistering(_), at)) => {
                now.saturating_duration_since(*at) >= RELOOK_EVERY
            }
            Some(_) => false,
        }
    }

    fn looked(&mut self, now: Instant, answer: Result<Stage, CallError>) {
        match answer {
            Ok(stage) => {
                self.fresh = self.stage.as_ref().is_none_or(|(s, _)| *s != stage);
                self.stage = Some((stage, now));
            }
            Err(err) => {
                if !self.blind {
                    let why = match err {
                        CallError::Denied(_) => {
                            "the instance profile lacks autoscaling:DescribeAutoScalingInstances"
                                .to_string()
                        }
                        other => other.text().to_string(),
                    };
                    tracing::warn!(error = %why, "lifecycle: cannot read the instance's lifecycle state; trying the completion until the wait bound");
                }
                self.blind = true;
            }
        }
    }

    /// Whether the next completion is a probe of a wait state still to come (deregistering, or
    /// blind): one attempt each, never retried through throttling.
    fn probing(&self) -> bool {
        self.blind || matches!(self.stage, Some((Stage::Deregistering(_), _)))
    }

    fn fresh_stage(&mut self) -> Option<&Stage> {
        if std::mem::take(&mut self.fresh) {
            self.stage.as_ref().map(|(s, _)| s)
        } else {
            None
        }
    }

    fn next(
        &mut self,
        now: Instant,
        window: Duration,
        bound_at: Instant,
        drain_started: Instant,
    ) -> Next {
        let long = |now: Instant| {
            if now >= bound_at {
                Next::TooLate
            } else {
                Next::Retry(wait_state::next_look(
                    now.saturating_duration_since(drain_started),
                ))
            }
        };
        match self.stage.as_ref().map(|(s, _)| s) {
            Some(Stage::Deregistering(_)) => {
                self.no_action_since = None;
                long(now)
            }
            Some(Stage::Over(state)) => Next::NothingToComplete(Some(state.clone())),
            None if self.blind => long(now),
            // In the wait state with no action for this hook (another hook's wait, or a
            // completion that just landed), or no termination under way: the short window.
            _ => {
                let since = *self.no_action_since.get_or_insert(now);
                let delay = self.short_delay;
                if now.saturating_duration_since(since).saturating_add(delay) > window {
                    // A last look before giving up: IMDS can run ahead of the API.
                    if matches!(self.stage, Some((Stage::NotTerminating(_), at)) if at < since + window / 2)
                    {
                        self.stage = None;
                        return Next::Retry(Duration::ZERO);
                    }
                    return Next::NothingToComplete(None);
                }
                self.short_delay = (delay * 2).min(Duration::from_secs(10));
                Next::Retry(backoff::within(delay))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A case: its name, the state known, the moment, and what must follow.
    type Case = (&'static str, Waiting, Instant, fn(&Next) -> bool);

    fn at(stage: &str, when: Instant) -> Option<(Stage, Instant)> {
        Some((Stage::of(Some(stage)), when))
    }

    #[test]
    fn what_follows_no_active_action_table() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let window = 2 * s;
        let bound = t0 + 100 * s;
        let cases: Vec<Case> = vec![
            (
                "deregistering: try again on the look schedule",
                Waiting {
                    stage: at("Terminating", t0),
                    ..Waiting::new(false)
                },
                t0 + 10 * s,
                |n| matches!(n, Next::Retry(d) if *d >= Duration::from_millis(7500) && *d <= Duration::from_secs(12)),
            ),
            (
                "deregistering past the bound: too late",
                Waiting {
                    stage: at("Terminating", t0),
                    ..Waiting::new(false)
                },
                t0 + 100 * s,
                |n| *n == Next::TooLate,
            ),
            (
                "past the wait state: nothing to complete, at once",
                Waiting {
                    stage: at("Terminating:Proceed", t0),
                    ..Waiting::new(false)
                },
                t0,
                |n| *n == Next::NothingToComplete(Some("Terminating:Proceed".to_string())),
            ),
            (
                "no termination under way: the short window",
                Waiting {
                    stage: at("InService", t0),
                    ..Waiting::new(false)
                },
                t0,
                |n| matches!(n, Next::Retry(d) if *d <= Duration::from_millis(200)),
            ),
            (
                "blind: keep trying until the bound",
                Waiting {
                    blind: true,
                    ..Waiting::new(false)
                },
                t0 + 50 * s,
                |n| matches!(n, Next::Retry(_)),
            ),
        ];
        for (name, mut waiting, now, want) in cases {
            let got = waiting.next(now, window, bound, t0);
            assert!(want(&got), "{name}: {got:?}");
        }
    }

    #[test]
    fn the_short_window_ends_with_one_more_look_then_nothing_to_complete() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut w = Waiting {
            stage: at("InService", t0),
            ..Waiting::new(false)
        };
        assert!(matches!(
            w.next(t0, 2 * s, t0 + 100 * s, t0),
            Next::Retry(_)
        ));
        // The window is over: look again first.
        assert_eq!(
            w.next(t0 + 3 * s, 2 * s, t0 + 100 * s, t0),
            Next::Retry(Duration::ZERO)
        );
        assert!(w.should_look(t0 + 3 * s));
        w.looked(t0 + 3 * s, Ok(Stage::of(Some("InService"))));
        assert_eq!(
            w.next(t0 + 3 * s, 2 * s, t0 + 100 * s, t0),
            Next::NothingToComplete(None)
        );
        // Had it been deregistering by then, the wait would go on.
        let mut w = Waiting {
            stage: at("InService", t0),
            ..Waiting::new(false)
        };
        let _ = w.next(t0, 2 * s, t0 + 100 * s, t0);
        let _ = w.next(t0 + 3 * s, 2 * s, t0 + 100 * s, t0);
        w.looked(t0 + 3 * s, Ok(Stage::of(Some("Terminating"))));
        assert!(matches!(w.next(t0 + 3 * s, 2 * s, t0 + 100 * s, t0), Next::Retry(d) if d >= s));
    }

    #[test]
    fn looks_are_rare_while_deregistering() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let w = Waiting {
            stage: at("Terminating", t0),
            ..Waiting::new(false)
        };
        assert!(!w.should_look(t0 + 59 * s));
        assert!(w.should_look(t0 + 60 * s));
        assert!(
            Waiting::new(false).should_look(t0),
            "the first no-action looks"
        );
        assert!(
            !Waiting::new(true).should_look(t0),
            "the wait state was seen"
        );
    }
}
