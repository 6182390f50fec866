//! Stateful agents: protect the instance from scale-in while the agent reports work in flight,
//! and publish the agent's own load as CloudWatch Embedded Metric Format lines, so the group can
//! scale on what the agent is doing rather than on CPU.
//!
//! The agent reports its load with `{"op":"busy","in_flight":N}` on the control socket or
//! `X_IN_FLIGHT=N` on `NOTIFY_SOCKET`. A report older than `--busy-stale` counts as idle, so a hung
//! agent cannot pin an instance forever. Protection is set with `SetInstanceProtection` only on a
//! change, at most once per `--protect-min-interval`, released after `--idle-release` without
//! work, released at once when a drain starts or the agent is gone, and read back at start so a
//! restarted guard converges instead of flapping. [`Protection`] decides, without I/O.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::oneshot;

use crate::agent::hub::Hub;
use crate::aws::lifecycle::{self, AwsContext};
use crate::config::settings::{BusySettings, EmfTarget, LifecycleSettings};
use crate::machine::state::Phase;

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
            self.min_interval * 2u32.pow(self.failures.min(5))
        };
        if let Some(last) = self.last_call
            && now < last + spacing
        {
            return Step::WaitUntil(last + spacing);
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

/// The running protection and EMF work; `finish` releases protection once the agent is gone.
pub struct BusyHandle {
    finish: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl BusyHandle {
    pub fn start(settings: BusySettings, aws: LifecycleSettings, hub: Arc<Hub>) -> BusyHandle {
        let (finish, finish_rx) = oneshot::channel();
        let task = tokio::spawn(run(settings, aws, hub, finish_rx));
        BusyHandle { finish, task }
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
    aws: LifecycleSettings,
    hub: Arc<Hub>,
    mut finish: oneshot::Receiver<()>,
) {
    let context = tokio::select! {
        c = lifecycle::connect(&aws, &hub) => c,
        _ = &mut finish => return,
    };
    let context = match context {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "scale-in protection and EMF metrics are off");
            let _ = finish.await;
            return;
        }
    };
    let mut protection = None;
    if settings.protect {
        let current = read_protection(&context, &hub).await;
        tracing::info!(protected = ?current, "scale-in protection: the instance's current state");
        hub.lifecycle().protected = current;
        protection = Some(Protection::new(
            settings.idle_release,
            settings.min_interval,
            current,
        ));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut emf_tick = tokio::time::interval(settings.emf_interval);
    emf_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick(), if protection.is_some() => {
                if let Some(p) = protection.as_mut() {
                    let phase = hub.phase.borrow().clone();
                    let release = !matches!(phase, Phase::Starting { .. } | Phase::Ready);
                    let is_busy = busy(hub.report().in_flight, SystemTime::now(), settings.busy_stale);
                    protect_step(p, &context, &hub, is_busy, release).await;
                }
            }
            _ = emf_tick.tick(), if settings.emf.is_some() => {
                if let Some(target) = &settings.emf {
                    write_emf(target, &context, &hub, &settings);
                }
            }
            _ = &mut finish => break,
        }
    }
    // The agent is gone: a protected instance without an agent must not stay protected.
    if let Some(p) = protection.as_mut() {
        for _ in 0..3 {
            match p.step(Instant::now(), false, true) {
                Step::Call(_) | Step::WaitUntil(_) if p.current != Some(false) => {
                    let ok = set_protection(&context, &hub, false).await;
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
}

async fn protect_step(
    p: &mut Protection,
    context: &AwsContext,
    hub: &Hub,
    is_busy: bool,
    release: bool,
) {
    if let Step::Call(want) = p.step(Instant::now(), is_busy, release) {
        let ok = set_protection(context, hub, want).await;
        p.called(Instant::now(), want, ok);
        if ok {
            hub.lifecycle().protected = Some(want);
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

async fn read_protection(context: &AwsContext, hub: &Hub) -> Option<bool> {
    let answer = context
        .client
        .describe_auto_scaling_instances()
        .instance_ids(&context.instance_id)
        .send()
        .await;
    match answer {
        Ok(out) => {
            lifecycle::record_call(hub, "DescribeAutoScalingInstances", "ok");
            out.auto_scaling_instances()
                .iter()
                .find(|i| i.instance_id() == Some(context.instance_id.as_str()))
                .and_then(|i| i.protected_from_scale_in())
        }
        Err(err) => {
            let (_, text) = lifecycle::retryable(&err);
            lifecycle::record_call(hub, "DescribeAutoScalingInstances", "error");
            tracing::warn!(error = %text, "scale-in protection: cannot read the current state");
            None
        }
    }
}

async fn set_protection(context: &AwsContext, hub: &Hub, protect: bool) -> bool {
    let answer = context
        .client
        .set_instance_protection()
        .auto_scaling_group_name(&context.group)
        .instance_ids(&context.instance_id)
        .protected_from_scale_in(protect)
        .send()
        .await;
    match answer {
        Ok(_) => {
            lifecycle::record_call(hub, "SetInstanceProtection", "ok");
            true
        }
        Err(err) => {
            let (retry, text) = lifecycle::retryable(&err);
            lifecycle::record_call(
                hub,
                "SetInstanceProtection",
                if retry { "retryable-error" } else { "error" },
            );
            tracing::warn!(protect, error = %text, "scale-in protection: SetInstanceProtection failed; will retry");
            false
        }
    }
}

/// One EMF line: the agent's load, the protection and the phase, by group and by instance.
pub fn emf_line(
    group: &str,
    instance_id: &str,
    in_flight: u64,
    protected: bool,
    phase: &str,
    now: SystemTime,
) -> String {
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "_aws": {
            "Timestamp": millis,
            "CloudWatchMetrics": [{
                "Namespace": "AgentGuard",
                // By group (what a target-tracking policy averages) and by instance.
                "Dimensions": [["AutoScalingGroupName"], ["AutoScalingGroupName", "InstanceId"]],
                "Metrics": [
                    {"Name": "InFlight", "Unit": "Count"},
                    {"Name": "ProtectedFromScaleIn", "Unit": "Count"},
                    {"Name": "Ready", "Unit": "Count"},
                    {"Name": "Draining", "Unit": "Count"},
                ],
            }],
        },
        "AutoScalingGroupName": group,
        "InstanceId": instance_id,
        "InFlight": in_flight,
        "ProtectedFromScaleIn": u8::from(protected),
        "Ready": u8::from(phase == "ready"),
        "Draining": u8::from(phase == "draining" || phase == "stopping"),
        "Phase": phase,
    })
    .to_string()
}

fn write_emf(target: &EmfTarget, context: &AwsContext, hub: &Hub, settings: &BusySettings) {
    let now = SystemTime::now();
    let report = hub.report().in_flight;
    let in_flight = if busy(report, now, settings.busy_stale) {
        report.map_or(0, |(n, _)| n)
    } else {
        0
    };
    let protected = hub.lifecycle().protected.unwrap_or(false);
    let phase = hub.phase.borrow().name();
    let mut line = emf_line(
        &context.group,
        &context.instance_id,
        in_flight,
        protected,
        phase.as_str(),
        now,
    );
    line.push('\n');
    let written = match target {
        EmfTarget::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
        EmfTarget::File(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes())),
    };
    if let Err(err) = written {
        tracing::warn!(error = %err, "cannot write the EMF metrics line");
    }
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
