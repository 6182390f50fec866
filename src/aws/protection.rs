//! Stateful agents: protect the instance from scale-in while the agent reports work in flight
//! (its load also goes out as CloudWatch EMF lines: see `emf`).
//!
//! The agent reports its load with `{"op":"busy","in_flight":N}` on the control socket or
//! `X_IN_FLIGHT=N` on `NOTIFY_SOCKET`. A report older than `--busy-stale` counts as idle, so a hung
//! agent cannot pin an instance forever. Protection is set with `SetInstanceProtection` only on a
//! change, at most once per `--protect-min-interval`, released after `--idle-release` without
//! work, released at once when a drain starts or the agent is gone, and read back at start so a
//! restarted guard converges instead of flapping. [`Protection`] decides, without I/O.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};

use crate::aws::api::{CallError, record_result};
use crate::aws::context::{AwsContext, SharedAws};
use crate::aws::status::LifecycleBoard;
use crate::config::settings::BusySettings;
use crate::machine::state::Phase;
use crate::model::report::AgentReport;

/// What the protection logic decides at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Call `SetInstanceProtection` with this value now.
    Call(bool),
    /// Nothing to do before this moment.
    WaitUntil(Instant),
    /// Nothing to do.
    Idle,
}

/// Scale-in protection's state and rules, without I/O.
#[derive(Debug, Clone)]
pub struct Protection {
    idle_release: Duration,
    min_interval: Duration,
    /// What the group says (read at start, then what was last set); `None` until known.
    pub current: Option<bool>,
    /// Since when the agent has had no work while protected.
    idle_since: Option<Instant>,
    last_call: Option<Instant>,
    /// Consecutive failed calls, for backoff.
    failures: u32,
}

impl Protection {
    pub fn new(idle_release: Duration, min_interval: Duration, current: Option<bool>) -> Self {
        Protection {
            idle_release,
            min_interval,
            current,
            idle_since: None,
            last_call: None,
            failures: 0,
        }
    }

    /// What to do at `now`, given whether the agent has work (`busy`) and whether it must go
    /// (`release`: a drain started or the agent is gone).
    pub fn step(&mut self, now: Instant, busy: bool, release: bool) -> Step {
        let want = if release {
            false
        } else if busy {
            self.idle_since = None;
            true
        } else if self.current == Some(true) {
            let since = *self.idle_since.get_or_insert(now);
            if now.duration_since(since) < self.idle_release {
                return Step::WaitUntil(since + self.idle_release);
            }
            false
        } else {
            false
        };
        if self.current == Some(want) {
            return Step::Idle;
        }
        // A protected instance that must go should not hold the group up: a release for a
        // drain skips the rate limit (but not the backoff after failures).
        let spacing = if release && self.failures == 0 {
            Duration::ZERO
        } else {
            self.min_interval
                .saturating_mul(2u32.pow(self.failures.min(5)))
        };
        if let Some(last) = self.last_call
            && now < crate::machine::state::later(last, spacing)
        {
            return Step::WaitUntil(crate::machine::state::later(last, spacing));
        }
        Step::Call(want)
    }

    /// Records a call's outcome.
    pub fn called(&mut self, now: Instant, set: bool, ok: bool) {
        self.last_call = Some(now);
        if ok {
            self.current = Some(set);
            self.failures = 0;
            if !set {
                self.idle_since = None;
            }
        } else {
            self.failures += 1;
        }
    }
}

/// Whether the agent has work: a report of N > 0 no older than `stale`.
pub fn busy(report: Option<(u64, SystemTime)>, now: SystemTime, stale: Duration) -> bool {
    report.is_some_and(|(n, at)| n > 0 && now.duration_since(at).unwrap_or_default() <= stale)
}

/// The running protection work; `finish` releases protection once the agent is gone.
pub struct ProtectionHandle {
    finish: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl ProtectionHandle {
    /// Starts the protection work: it reads the phase (a drain releases protection) and the
    /// agent's reports of work in flight.
    pub fn start(
        settings: BusySettings,
        aws: Arc<SharedAws>,
        board: LifecycleBoard,
        reads: (watch::Receiver<Phase>, watch::Receiver<AgentReport>),
    ) -> ProtectionHandle {
        let (finish, finish_rx) = oneshot::channel();
        let task = tokio::spawn(run(settings, aws, board, reads, finish_rx));
        ProtectionHandle { finish, task }
    }

    /// The agent is gone: releases protection (bounded) and stops.
    pub async fn finish(self) {
        let _ = self.finish.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(30), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

async fn run(
    settings: BusySettings,
    aws: Arc<SharedAws>,
    board: LifecycleBoard,
    (phase, report): (watch::Receiver<Phase>, watch::Receiver<AgentReport>),
    mut finish: oneshot::Receiver<()>,
) {
    let context = tokio::select! {
        c = aws.get() => c,
        _ = &mut finish => return,
    };
    let context = match context {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "scale-in protection is off");
            let _ = finish.await;
            return;
        }
    };
    let current = read_protection(&context, &board).await;
    tracing::info!(protected = ?current, "scale-in protection: the instance's current state");
    board.update(|l| l.protected = current);
    let mut protection = Protection::new(settings.idle_release, settings.min_interval, current);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let release = !matches!(*phase.borrow(), Phase::Starting { .. } | Phase::Ready);
                let in_flight = report.borrow().in_flight;
                let is_busy = busy(in_flight, SystemTime::now(), settings.busy_stale);
                protect_step(&mut protection, &context, &board, is_busy, release).await;
            }
            _ = &mut finish => break,
        }
    }
    release_at_exit(&mut protection, &context, &board).await;
}

/// The agent is gone: a protected instance without an agent must not stay protected.
async fn release_at_exit(p: &mut Protection, context: &AwsContext, board: &LifecycleBoard) {
    for _ in 0..3 {
        match p.step(Instant::now(), false, true) {
            Step::Call(_) | Step::WaitUntil(_) if p.current != Some(false) => {
                let ok = set_protection(context, board, false).await;
                p.called(Instant::now(), false, ok);
                if ok {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => break,
        }
    }
}

async fn protect_step(
    p: &mut Protection,
    context: &AwsContext,
    board: &LifecycleBoard,
    is_busy: bool,
    release: bool,
) {
    if let Step::Call(want) = p.step(Instant::now(), is_busy, release) {
        let ok = set_protection(context, board, want).await;
        p.called(Instant::now(), want, ok);
        if ok {
            board.update(|l| l.protected = Some(want));
            tracing::info!(
                protected = want,
                why = if release {
                    "draining"
                } else if is_busy {
                    "work in flight"
                } else {
                    "idle"
                },
                "scale-in protection changed"
            );
        }
    }
}

async fn read_protection(context: &AwsContext, board: &LifecycleBoard) -> Option<bool> {
    let answer = context
        .client
        .describe_auto_scaling_instances()
        .instance_ids(&context.instance_id)
        .send()
        .await
        .map_err(|e| CallError::from(&e));
    record_result(board, "DescribeAutoScalingInstances", &answer);
    match answer {
        Ok(out) => out
            .auto_scaling_instances()
            .iter()
            .find(|i| i.instance_id() == Some(context.instance_id.as_str()))
            .and_then(|i| i.protected_from_scale_in()),
        Err(err) => {
            tracing::warn!(error = %err, "scale-in protection: cannot read the current state");
            None
        }
    }
}

async fn set_protection(context: &AwsContext, board: &LifecycleBoard, protect: bool) -> bool {
    let answer = context
        .client
        .set_instance_protection()
        .auto_scaling_group_name(&context.group)
        .instance_ids(&context.instance_id)
        .protected_from_scale_in(protect)
        .send()
        .await
        .map_err(|e| CallError::from(&e));
    record_result(board, "SetInstanceProtection", &answer);
    if let Err(err) = &answer {
        tracing::warn!(protect, error = %err, "scale-in protection: SetInstanceProtection failed; will retry");
    }
    answer.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn protection_table() {
        let t0 = Instant::now();
        let mut p = Protection::new(30 * S, 10 * S, Some(false));
        assert_eq!(p.step(t0, true, false), Step::Call(true), "busy: protect");
        p.called(t0, true, true);
        assert_eq!(p.step(t0 + S, true, false), Step::Idle);
        // Idle: released only after the idle delay.
        assert_eq!(
            p.step(t0 + 2 * S, false, false),
            Step::WaitUntil(t0 + 32 * S)
        );
        assert_eq!(
            p.step(t0 + 20 * S, true, false),
            Step::Idle,
            "busy again: the delay restarts"
        );
        assert_eq!(
            p.step(t0 + 21 * S, false, false),
            Step::WaitUntil(t0 + 51 * S)
        );
        assert_eq!(p.step(t0 + 51 * S, false, false), Step::Call(false));
        p.called(t0 + 51 * S, false, true);
        assert_eq!(p.step(t0 + 52 * S, false, false), Step::Idle);
        // Busy again within the minimum interval: wait for it.
        assert_eq!(
            p.step(t0 + 55 * S, true, false),
            Step::WaitUntil(t0 + 61 * S)
        );
        assert_eq!(p.step(t0 + 61 * S, true, false), Step::Call(true));
        p.called(t0 + 61 * S, true, true);
        // A drain releases at once, rate limit or not.
        assert_eq!(p.step(t0 + 62 * S, true, true), Step::Call(false));
    }

    #[test]
    fn failures_back_off_and_a_restart_converges() {
        let t0 = Instant::now();
        let mut p = Protection::new(30 * S, 10 * S, Some(false));
        assert_eq!(p.step(t0, true, false), Step::Call(true));
        p.called(t0, true, false);
        assert_eq!(
            p.step(t0 + S, true, false),
            Step::WaitUntil(t0 + 20 * S),
            "backoff doubles"
        );
        p.called(t0 + 20 * S, true, true);
        assert_eq!(p.current, Some(true));
        // A restarted guard that reads "protected" and sees a busy agent makes no call.
        let mut restarted = Protection::new(30 * S, 10 * S, Some(true));
        assert_eq!(restarted.step(t0, true, false), Step::Idle);
    }

    #[test]
    fn stale_reports_are_idle() {
        let now = SystemTime::now();
        assert!(busy(Some((3, now)), now, 300 * S));
        assert!(!busy(Some((0, now)), now, 300 * S));
        assert!(!busy(Some((3, now - 301 * S)), now, 300 * S));
        assert!(!busy(None, now, 300 * S));
    }
}
