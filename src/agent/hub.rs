//! What the supervisor shares with the parts that face the agent and the operator (the control
//! socket, the sd_notify socket, later the health endpoint): announcements going out (phase
//! changes and drains), the agent's own reports coming in (status text, watchdog pings, work in
//! flight), and how many subscribers are listening.
//!
//! The phase itself stays the supervisor's: everyone else reads it through the `watch` here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, broadcast, watch};

use serde_json::{Value, json};

use crate::aws::notices::ImdsStatus;
use crate::config::HookResult;
use crate::fmt::rfc3339;
use crate::health::checks::Snapshot;
use crate::journal::Awaiting;
use crate::machine::restart::RestartPolicy;
use crate::machine::state::{Cleanup, DrainReason, Phase, PhaseName, Restart};
use crate::names::named_enum;
use crate::process::cgroup::Tracking;

named_enum! {
    /// Where the work on one lifecycle hook stands.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub enum HookState {
        /// Nothing to do yet: no drain that ends the instance, or the agent is not ready.
        #[default]
        Waiting = "waiting",
        /// A terminating drain runs: heartbeats keep the hook open.
        Heartbeating = "heartbeating",
        /// The agent is gone: `CompleteLifecycleAction` is being sent.
        Completing = "completing",
        /// The group accepted the completion.
        Completed = "completed",
        /// The group held no lifecycle action for this instance.
        NothingToComplete = "nothing-to-complete",
        /// Completion failed for good (permission, or retries exhausted).
        GaveUp = "gave-up",
        /// The agent is gone; the instance is not in its wait state yet, or other guards on
        /// this host still run: see [`LifecycleStatus::awaiting`].
        Awaiting = "awaiting",
        /// The agent is gone, and another guard on this host completed the hook.
        LeftToOthers = "left-to-other-guards",
    }
}

/// One hook as `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookStatus {
    pub name: String,
    pub state: HookState,
    pub heartbeats: u64,
    pub result: Option<HookResult>,
    pub last_error: Option<String>,
}

/// What `/status` and `/metrics` show of the lifecycle work.
#[derive(Debug, Clone, Default)]
pub struct LifecycleStatus {
    pub group: Option<String>,
    pub instance_id: Option<String>,
    pub heartbeat_interval: Option<Duration>,
    pub terminate: Option<HookStatus>,
    pub launch: Option<HookStatus>,
    /// Calls by (action, outcome).
    pub calls: BTreeMap<(&'static str, &'static str), u64>,
    /// A setup failure that turned hook completion off.
    pub error: Option<String>,
    /// Whether the instance is protected from scale-in (`--protect-while-busy`), if known.
    pub protected: Option<bool>,
    /// What the termination hook's work waits for, while it waits.
    pub awaiting: Option<AwaitingStatus>,
}

/// What the termination hook's work waits for, since when, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwaitingStatus {
    pub what: Awaiting,
    pub since: SystemTime,
    /// `deregistration in progress (Terminating)`, `indexer (pid 812)` …
    pub detail: String,
}

impl AwaitingStatus {
    /// One line: `waiting for Terminating:Wait since 14:02:11, deregistration in progress`.
    pub fn text(&self) -> String {
        let since = crate::fmt::rfc3339(self.since);
        // The time of day is what an operator compares with the clock on the wall.
        let clock = since.get(11..19).unwrap_or(&since);
        match self.what {
            Awaiting::WaitState => {
                format!(
                    "waiting for Terminating:Wait since {clock}, {}",
                    self.detail
                )
            }
            Awaiting::OtherGuards => format!(
                "waiting since {clock} for the other guards on this host: {}",
                self.detail
            ),
        }
    }
}

/// Something every subscriber hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// The phase changed to this.
    Phase(PhaseName),
    /// A drain started (or its deadline moved).
    Drain(DrainInfo),
}

/// A drain as the agent hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainInfo {
    pub reason: DrainReason,
    /// Wall-clock deadline, for the RFC 3339 field.
    pub deadline: SystemTime,
    /// The same deadline on the monotonic clock, for `deadline_in_ms`.
    pub deadline_at: Instant,
}

/// What the agent has told the guard about itself.
#[derive(Debug, Clone, Default)]
pub struct AgentReport {
    /// The last sd_notify `STATUS=`.
    pub status: Option<String>,
    /// The agent said `STOPPING=1`.
    pub stopping: bool,
    /// The last `WATCHDOG=1`, or when the agent started.
    pub last_watchdog: Option<Instant>,
    /// `WATCHDOG=trigger`: the agent declared itself failed.
    pub watchdog_triggered: bool,
    /// Work in flight and when it was reported.
    pub in_flight: Option<(u64, SystemTime)>,
    /// The drain in progress, if any.
    pub drain: Option<DrainInfo>,
    /// What made the agent ready (`start`, `notify`, `control`, `warm-up`, `health`).
    pub ready_source: Option<&'static str>,
}

/// What the guard itself tracks for status and metrics.
#[derive(Debug, Clone)]
pub struct GuardStats {
    /// When the phase last changed (by name).
    pub phase_since: SystemTime,
    /// The supervisor's last wake-up: a stuck loop fails /livez.
    pub last_tick: Instant,
    /// Drains started, by reason.
    pub drains: BTreeMap<DrainReason, u64>,
    /// The agent's exit code (128+N for a signal), once it exited.
    pub agent_exit: Option<u8>,
    /// Where the health endpoint listens.
    pub health_addr: Option<SocketAddr>,
    /// The agent's starts and exits (`--restart`), and the `--on-drain` command.
    pub runs: AgentRuns,
    /// The agent's cgroup or its process group: which one says the agent is gone.
    pub tracking: crate::process::cgroup::Tracking,
}

/// The agent's runs and its drain command, for `/status` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct AgentRuns {
    pub policy: RestartPolicy,
    /// Times an agent exited.
    pub exits: u64,
    /// Times the agent was started again.
    pub restarts: u64,
    /// The restarts ended in a crash loop (`--crash-loop`).
    pub crash_loop: bool,
    /// This run's `--on-drain` command, once started.
    pub drain_command: Option<DrainCommandStatus>,
}

/// The `--on-drain` command as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainCommandStatus {
    pub pid: i32,
    pub started: SystemTime,
    /// Its status once reaped (128+N for signal N).
    pub status: Option<u8>,
    /// The guard killed it (at the drain deadline, or when the agent was gone).
    pub killed: bool,
}

/// The shared hub. One per run, behind an `Arc`.
pub struct Hub {
    pub name: String,
    pub phase: watch::Receiver<Phase>,
    pub watchdog: Option<Duration>,
    pub imds: watch::Receiver<ImdsStatus>,
    pub checks: watch::Receiver<Snapshot>,
    /// The agent asked for more time (the lifecycle work heartbeats at once).
    pub extended: Notify,
    /// `--ready-timeout` ran out (the launch hook is abandoned).
    pub ready_timed_out: Notify,
    /// Why the agent is held back, not started yet (`--in-warm-pool wait`); `None` otherwise.
    held: watch::Sender<Option<String>>,
    lifecycle: Mutex<LifecycleStatus>,
    announce: broadcast::Sender<Announcement>,
    subscribers: AtomicUsize,
    report: Mutex<AgentReport>,
    stats: Mutex<GuardStats>,
    agent_pid: Mutex<Option<i32>>,
    started: Instant,
    agent_started: Mutex<Option<Instant>>,
}

impl Hub {
    pub fn new(
        name: &str,
        phase: watch::Receiver<Phase>,
        watchdog: Option<Duration>,
        imds: watch::Receiver<ImdsStatus>,
        checks: watch::Receiver<Snapshot>,
    ) -> Self {
        // A subscriber that falls this far behind misses announcements; it is told so.
        let (announce, _) = broadcast::channel(64);
        Hub {
            name: name.to_string(),
            phase,
            watchdog,
            imds,
            checks,
            announce,
            subscribers: AtomicUsize::new(0),
            report: Mutex::new(AgentReport::default()),
            stats: Mutex::new(GuardStats {
                phase_since: SystemTime::now(),
                last_tick: Instant::now(),
                drains: BTreeMap::new(),
                agent_exit: None,
                health_addr: None,
                runs: AgentRuns::default(),
                tracking: Default::default(),
            }),
            lifecycle: Mutex::new(LifecycleStatus::default()),
            extended: Notify::new(),
            ready_timed_out: Notify::new(),
            held: watch::channel(None).0,
            agent_pid: Mutex::new(None),
            started: Instant::now(),
            agent_started: Mutex::new(None),
        }
    }

    /// The lifecycle work's state, to read or update.
    pub fn lifecycle(&self) -> MutexGuard<'_, LifecycleStatus> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the agent back (`Some(why)`) or lets it start (`None`).
    pub fn set_held(&self, why: Option<String>) {
        self.held.send_replace(why);
    }

    /// Why the agent is held back, if it is.
    pub fn held(&self) -> Option<String> {
        self.held.borrow().clone()
    }

    /// The hold as it changes (the lifecycle work completes the launch hook of a held instance).
    pub fn held_changes(&self) -> watch::Receiver<Option<String>> {
        self.held.subscribe()
    }

    /// The guard's own counters, to read or update.
    pub fn stats(&self) -> MutexGuard<'_, GuardStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long the agent has run.
    pub fn agent_uptime(&self) -> Option<Duration> {
        self.agent_started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    /// Sends `a` to every subscriber.
    pub fn announce(&self, a: Announcement) {
        if let Announcement::Drain(info) = &a {
            self.report().drain = Some(info.clone());
        }
        // No receiver is fine: nobody listens.
        let _ = self.announce.send(a);
    }

    /// A new subscription. One from the agent's own processes (`agent`) counts as a listener
    /// until it is dropped: a drain then waits for the agent. An observer's (an operator's `ctl
    /// subscribe`, a drill) hears the same events but must not make the guard wait for it.
    pub fn subscribe_owned(self: &Arc<Self>, agent: bool) -> OwnedSubscription {
        if agent {
            self.subscribers.fetch_add(1, Ordering::SeqCst);
        }
        OwnedSubscription {
            hub: self.clone(),
            rx: self.announce.subscribe(),
            counted: agent,
        }
    }

    /// Whether anyone listens for drain announcements.
    pub fn has_subscribers(&self) -> bool {
        self.subscribers() > 0
    }

    /// How many of the agent's connections are subscribed.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::SeqCst)
    }

    /// The agent's reports, to read or update.
    pub fn report(&self) -> MutexGuard<'_, AgentReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_agent_pid(&self, pid: i32) {
        *self.agent_pid.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
        *self.agent_started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.report().last_watchdog = Some(Instant::now());
    }

    /// The agent was started again (`--restart`): what its predecessor reported does not carry
    /// over (a triggered watchdog, `STOPPING=1`, its work in flight).
    pub fn agent_restarted(&self, pid: i32) {
        self.set_agent_pid(pid);
        let mut report = self.report();
        report.stopping = false;
        report.watchdog_triggered = false;
        report.in_flight = None;
    }

    pub fn agent_pid(&self) -> Option<i32> {
        *self.agent_pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long ago the guard started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the agent missed its `--watchdog` deadline (or triggered it). Between an exit and
    /// a restart no agent runs to feed it: nothing is missed then.
    pub fn watchdog_missed(&self, now: Instant) -> bool {
        let Some(period) = self.watchdog else {
            return false;
        };
        if matches!(*self.phase.borrow(), Phase::Restarting(_)) {
            return false;
        }
        let report = self.report();
        report.watchdog_triggered
            || report
                .last_watchdog
                .is_some_and(|last| now.saturating_duration_since(last) > period)
    }
}

/// A live subscription; the count drops with it.
pub struct OwnedSubscription {
    hub: Arc<Hub>,
    pub rx: broadcast::Receiver<Announcement>,
    counted: bool,
}

impl Drop for OwnedSubscription {
    fn drop(&mut self) {
        if self.counted {
            self.hub.subscribers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The whole state as JSON: the control socket's `status` reply and the body of `/status`.
pub fn status_json(hub: &Hub) -> Value {
    let phase = hub.phase.borrow().clone();
    let report = hub.report().clone();
    let stats = hub.stats().clone();
    let now = Instant::now();
    let imds = hub.imds.borrow().clone();
    let checks = hub.checks.borrow().verdicts(now);
    json!({
        "ok": true,
        "name": hub.name,
        "phase": phase.name(),
        "phase_since": rfc3339(stats.phase_since),
        "agent_pid": hub.agent_pid(),
        "agent_uptime_s": hub.agent_uptime().map(|d| d.as_secs()),
        "agent_exit": stats.agent_exit,
        "uptime_s": hub.uptime().as_secs(),
        "held": hub.held(),
        "ready_source": report.ready_source,
        "status": report.status,
        "stopping": report.stopping,
        "in_flight": report.in_flight.map(|(n, _)| n),
        "in_flight_reported": report.in_flight.map(|(_, at)| rfc3339(at)),
        "drain": report.drain.as_ref().filter(|_| phase.agent_running()).map(|d| json!({
            "reason": d.reason.as_str(),
            "deadline": rfc3339(d.deadline),
            "deadline_in_ms": d.deadline_at.saturating_duration_since(now).as_millis() as u64,
        })),
        "drains": stats.drains.iter().map(|(r, n)| (r.as_str(), *n)).collect::<BTreeMap<_, _>>(),
        "restart": restart_json(&phase, &stats.runs, now),
        "on_drain": stats.runs.drain_command.as_ref().map(drain_command_json),
        "watchdog_missed": hub.watchdog_missed(now),
        "subscribers": hub.subscribers(),
        "health_listen": stats.health_addr.map(|a| a.to_string()),
        "cgroup": cgroup_json(&stats.tracking),
        "imds": (!imds.endpoint.is_empty()).then(|| imds_json(&imds)),
        "lifecycle": lifecycle_json(&hub.lifecycle()),
        "checks": checks.iter().map(|v| json!({
            "name": v.name,
            "ok": v.ok,
            "why": v.why,
            "target": v.result.as_ref().map(|r| r.shown.clone()),
            "latency_ms": v.result.as_ref().map(|r| r.latency.as_secs_f64() * 1000.0),
            "checked": v.result.as_ref().map(|r| rfc3339(r.at_wall)),
        })).collect::<Vec<_>>(),
    })
}

/// `--cgroup`: what stands for the agent's processes, and, with a cgroup, their resources now.
fn cgroup_json(tracking: &Tracking) -> Value {
    let Some(cgroup) = &tracking.cgroup else {
        return json!({
            "mode": tracking.mode,
            "tracked_by": "process-group",
            "why": tracking.fallback,
        });
    };
    let usage = cgroup.usage();
    json!({
        "mode": tracking.mode,
        "tracked_by": "cgroup",
        "path": cgroup.path().display().to_string(),
        "controllers": cgroup.controllers(),
        "memory_max": cgroup.memory_max(),
        "populated": cgroup.populated(),
        "processes": usage.processes,
        "memory_current": usage.memory_current,
        "memory_peak": usage.memory_peak,
        "cpu_usage_s": usage.cpu_usage_usec.map(|u| u as f64 / 1e6),
        "oom_kills": usage.oom_kills,
        "pressure": usage.pressure.iter().map(|(r, p)| (r.to_string(), json!({
            "some_avg10": p.some_avg10,
            "full_avg10": p.full_avg10,
        }))).collect::<serde_json::Map<_, _>>(),
    })
}

/// `--restart`: the policy, the restarts so far, and while one is pending its attempt and when.
fn restart_json(phase: &Phase, runs: &AgentRuns, now: Instant) -> Value {
    let pending = match phase {
        Phase::Restarting(r) => Some(r),
        _ => None,
    };
    json!({
        "policy": runs.policy.as_str(),
        "restarts": runs.restarts,
        "restarting": pending.is_some(),
        "attempt": pending.map(|r| r.attempt),
        // At the latest: the next start also waits out the old agent's leftovers' grace.
        "next_in_ms": pending.map(|r| u64::try_from(next_start(r).saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
        "waiting_for_leftovers": pending.map(|r| r.cleanup.is_some()),
        "crash_loop": runs.crash_loop,
    })
}

/// The latest the next start waits for: its delay, and the grace (or the kernel's removal) of
/// what is left of the last agent's group, whichever ends later.
fn next_start(r: &Restart) -> Instant {
    match r.cleanup {
        Some(Cleanup::Signalled { kill_at }) => r.at.max(kill_at),
        Some(Cleanup::Killed { give_up_at }) => r.at.max(give_up_at),
        None => r.at,
    }
}

fn drain_command_json(c: &DrainCommandStatus) -> Value {
    let state = match (c.status, c.killed) {
        (None, false) => "running",
        (None, true) | (Some(_), true) => "killed",
        (Some(_), false) => "exited",
    };
    json!({
        "pid": c.pid,
        "started": rfc3339(c.started),
        "state": state,
        "status": c.status,
    })
}

/// What the guard knows of IMDS, for `/status`.
fn imds_json(imds: &ImdsStatus) -> Value {
    json!({
        "endpoint": imds.endpoint,
        "instance_id": imds.instance_id,
        "region": imds.region,
        "lifecycle_state": imds.lifecycle_state,
        "last_poll": imds.last_poll.map(rfc3339),
        "last_ok": imds.last_ok.map(rfc3339),
        "errors": imds.errors_total,
        "last_error": imds.last_error,
        "notices": imds.notices.iter().map(|n| json!({
            "kind": n.kind.as_str(),
            "value": n.value,
            "seen": rfc3339(n.seen_at),
            "drain": n.drain.map(|r| r.as_str()),
        })).collect::<Vec<_>>(),
        "scheduled_events": imds.scheduled_events.iter().map(|t| json!({
            "id": t.event.id,
            "code": t.event.code_text,
            "state": t.event.state.as_str(),
            "not_before": rfc3339(t.event.not_before),
            "not_after": t.event.not_after.map(rfc3339),
            "listed": t.listed,
            "handling": t.handling.as_str(),
            "drain_at": t.handling.drain_at().map(rfc3339),
        })).collect::<Vec<_>>(),
    })
}

fn lifecycle_json(l: &LifecycleStatus) -> Value {
    let hook = |h: &Option<HookStatus>| {
        h.as_ref().map(|h| {
            json!({
                "name": h.name,
                "state": h.state.as_str(),
                "heartbeats": h.heartbeats,
                "result": h.result.map(HookResult::as_str),
                "last_error": h.last_error,
            })
        })
    };
    if l.terminate.is_none() && l.launch.is_none() && l.protected.is_none() && l.group.is_none() {
        return Value::Null;
    }
    json!({
        "group": l.group,
        "instance_id": l.instance_id,
        "heartbeat_interval_s": l.heartbeat_interval.map(|d| d.as_secs_f64()),
        "terminate_hook": hook(&l.terminate),
        "launch_hook": hook(&l.launch),
        "error": l.error,
        "protected_from_scale_in": l.protected,
        "waiting_for": l.awaiting.as_ref().map(|a| json!({
            "what": a.what.as_str(),
            "since": rfc3339(a.since),
            "detail": a.detail,
            "text": a.text(),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::exit::ChildExit;

    #[test]
    fn the_next_start_waits_for_the_leftovers_grace() {
        let now = Instant::now();
        let s = Duration::from_secs(1);
        let restart = |cleanup| Restart {
            last: ChildExit::for_test(1),
            attempt: 1,
            at: now,
            cleanup,
        };
        assert_eq!(next_start(&restart(None)), now);
        let grace = Some(Cleanup::Signalled {
            kill_at: now + 5 * s,
        });
        assert_eq!(
            next_start(&restart(grace)),
            now + 5 * s,
            "not 0 while the grace runs"
        );
        let killed = Some(Cleanup::Killed {
            give_up_at: now + 2 * s,
        });
        assert_eq!(next_start(&restart(killed)), now + 2 * s);
    }
}
