//! The one owner of the phase: receives events (signals, the reaper, timers, and the event
//! channel other parts send on), calls `state::step`, publishes the new phase, then performs the
//! actions in order.
//!
//! Publishing comes before acting so that anything reading the phase (readiness) already sees
//! the drain when the agent is told of it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::{Interval, MissedTickBehavior, interval, sleep_until};

use crate::agent::hub::{Announcement, DrainInfo, Hub};
use crate::agent::sdnotify::Upstream;
use crate::config::{Config, ForwardTo};
use crate::fmt::format_duration;
use crate::journal::Record;
use crate::machine::state::{
    Action, Cleanup, Ctx, DrainReason, Event, Phase, ReadyOn, State, Target, step,
};
use crate::process::child::Agent;
use crate::process::exit::ChildExit;
use crate::process::reaper::Reaper;
use crate::process::sig::{Role, Sig, role};
use crate::process::signals::SignalSource;

/// How long to wait for the kernel to remove processes after SIGKILL before giving up on them.
/// Only a process stuck in uninterruptible sleep takes longer, and waiting cannot help it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often the group is checked for leftovers once the agent has exited. Members that are not
/// the guard's children raise no SIGCHLD here, so this is polled.
const GROUP_POLL: Duration = Duration::from_millis(25);

/// A safety net for a lost SIGCHLD, as tini's one-second tick is.
const REAP_TICK: Duration = Duration::from_secs(1);

/// The settings `step` needs, taken from the config once.
#[derive(Debug, Clone)]
pub struct StopSettings {
    pub stop_signal: Sig,
    pub stop_timeout: Duration,
    pub drain_timeout: Duration,
    pub drain_signal: Option<Sig>,
    pub forward_to: ForwardTo,
    pub ready_on: ReadyOn,
    pub ready_timeout: Duration,
}

impl StopSettings {
    pub fn from_config(config: &Config) -> Self {
        StopSettings {
            stop_signal: config.stop_signal,
            stop_timeout: config.stop_timeout,
            drain_timeout: config.drain_timeout,
            drain_signal: config.drain_signal,
            forward_to: config.forward_to,
            ready_on: config.ready_on,
            ready_timeout: config.ready_timeout,
        }
    }
}

/// How the supervision ended: the agent's status, and whether the guard had to SIGKILL.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: ChildExit,
    /// SIGKILL went to the agent's group: a status of 128+TERM is then not a clean stop.
    pub sigkilled: bool,
}

/// The supervisor of one running agent.
pub struct Supervisor {
    agent: Agent,
    reaper: Reaper,
    signals: SignalSource,
    events: mpsc::Receiver<Event>,
    /// Kept so the channel never closes while the supervisor runs.
    _events_tx: mpsc::Sender<Event>,
    phase: watch::Sender<Phase>,
    hub: Arc<Hub>,
    upstream: Upstream,
    settings: StopSettings,
    state: State,
    reap_tick: Interval,
    group_poll: Interval,
    sigkilled: bool,
}

/// What woke the supervisor up.
enum Wake {
    Signal(Sig),
    Event(Event),
    Timer,
    ReapTick,
    GroupPoll,
}

impl Supervisor {
    /// A supervisor for `agent`, which must have been spawned after `signals` was installed.
    pub fn new(
        agent: Agent,
        signals: SignalSource,
        settings: StopSettings,
        events: (mpsc::Sender<Event>, mpsc::Receiver<Event>),
        phase: watch::Sender<Phase>,
        hub: Arc<Hub>,
        upstream: Upstream,
    ) -> Self {
        let mut reap_tick = interval(REAP_TICK);
        reap_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut group_poll = interval(GROUP_POLL);
        group_poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Supervisor {
            agent,
            reaper: Reaper::new(agent.pid()),
            signals,
            events: events.1,
            _events_tx: events.0,
            phase,
            hub,
            upstream,
            settings,
            state: State::new(),
            reap_tick,
            group_poll,
            sigkilled: false,
        }
    }

    /// Runs until the agent and its process group are gone; returns how it ended.
    pub async fn run(mut self) -> Outcome {
        tracing::info!(pid = self.agent.pid(), "agent started");
        self.apply(Event::Spawned);
        loop {
            if let Phase::Done(exit) = &self.state.phase {
                return Outcome {
                    exit: exit.clone(),
                    sigkilled: self.sigkilled,
                };
            }
            let woke = self.wait().await;
            self.hub.stats().last_tick = Instant::now();
            let event = match woke {
                Wake::Signal(sig) => self.on_signal(sig),
                Wake::Event(event) => Some(event),
                Wake::Timer => Some(Event::Timer),
                Wake::ReapTick => self.reaper.reap().map(Event::ChildExited),
                Wake::GroupPoll => {
                    // Reap first: leftovers that exited may be zombies of the guard's own
                    // (orphans it adopted), and the run must not end with them unreaped.
                    let _ = self.reaper.reap();
                    (!self.agent.group_alive()).then_some(Event::GroupGone)
                }
            };
            if let Some(event) = event {
                self.apply(event);
            }
        }
    }

    async fn wait(&mut self) -> Wake {
        let deadline = self.state.phase.deadline();
        let cleaning = matches!(self.state.phase, Phase::Exited { .. });
        let timer_at = tokio::time::Instant::from_std(
            deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400)),
        );
        tokio::select! {
            biased;
            sig = self.signals.next() => match sig {
                Some(sig) => Wake::Signal(sig),
                None => Wake::ReapTick,
            },
            Some(event) = self.events.recv() => Wake::Event(event),
            _ = sleep_until(timer_at), if deadline.is_some() => Wake::Timer,
            _ = self.group_poll.tick(), if cleaning => Wake::GroupPoll,
            _ = self.reap_tick.tick() => Wake::ReapTick,
        }
    }

    fn on_signal(&mut self, sig: Sig) -> Option<Event> {
        match role(sig) {
            Role::Reap => self.reaper.reap().map(Event::ChildExited),
            Role::Stop => {
                let record = Record::StopSignalReceived {
                    signal: sig.to_string(),
                };
                tracing::info!(signal = %sig, journal = %record.json(), "received a stop signal");
                Some(Event::StopSignal)
            }
            Role::Forward => Some(Event::Forward(sig)),
        }
    }

    fn apply(&mut self, event: Event) {
        let ctx = Ctx {
            now: Instant::now(),
            stop_signal: self.settings.stop_signal,
            stop_timeout: self.settings.stop_timeout,
            drain_timeout: self.settings.drain_timeout,
            drain_signal: self.settings.drain_signal,
            listeners: self.hub.has_subscribers(),
            kill_wait: KILL_WAIT,
            ready_on: self.settings.ready_on,
            ready_timeout: self.settings.ready_timeout,
        };
        let before = self.state.phase.clone();
        if event == Event::Drained && matches!(before, Phase::Draining(_)) {
            let record = Record::AgentDrained;
            tracing::info!(journal = %record.json(), "the agent says it is drained");
        }
        let (next, actions) = step(&self.state, event, &ctx);
        self.state = next;
        if before != self.state.phase {
            self.log_transition(&before, &ctx);
            self.publish(&before);
        }
        for action in actions {
            self.perform(action, &ctx);
        }
    }

    /// Makes a phase change visible: the watch (readiness) first, then subscribers and systemd.
    fn publish(&mut self, before: &Phase) {
        let phase = self.state.phase.clone();
        self.phase.send_replace(phase.clone());
        if before.name() == phase.name() {
            return;
        }
        {
            let mut stats = self.hub.stats();
            stats.phase_since = SystemTime::now();
            let drain_started = matches!(before, Phase::Starting { .. } | Phase::Ready);
            if let (Some(reason), true) = (phase.drain_reason(), drain_started) {
                *stats.drains.entry(reason).or_insert(0) += 1;
            }
            if let Phase::Exited { exit, .. } = &phase {
                stats.agent_exit = Some(exit.exit_code());
            }
        }
        if let Phase::Ready = phase {
            let source = match self.settings.ready_on {
                ReadyOn::Start => "start",
                ReadyOn::Warmup(_) => "warm-up",
                ReadyOn::Notify => "notify",
                ReadyOn::Health => "health",
            };
            self.hub.report().ready_source.get_or_insert(source);
            self.upstream.send("READY=1");
        }
        if phase.drain_reason().is_some() && before.drain_reason().is_none() {
            self.upstream.send("STOPPING=1");
        }
        if self.hub.report().status.is_none() {
            self.upstream
                .send(&format!("STATUS=agent {}", phase.name()));
        }
        self.hub.announce(Announcement::Phase(phase.name()));
    }

    fn announce_drain(&self, reason: DrainReason, deadline: Instant, now: Instant) {
        let left = deadline.saturating_duration_since(now);
        self.hub.announce(Announcement::Drain(DrainInfo {
            reason,
            deadline: crate::fmt::wall_after(SystemTime::now(), left),
            deadline_at: deadline,
        }));
    }

    fn perform(&mut self, action: Action, ctx: &Ctx) {
        let pgid = self.agent.pid();
        let result = match action {
            Action::Signal {
                signal,
                to: Target::Group,
            } => {
                if !self.state.phase.agent_running() && !self.agent.group_alive() {
                    return; // the agent left nothing behind
                }
                let record = Record::StopSignalSent {
                    signal: signal.to_string(),
                    pgid,
                };
                tracing::info!(signal = %signal, pgid, journal = %record.json(), "sent the stop signal to the agent's process group");
                let sent = self.signal_group(signal);
                // As systemd does after KillSignal=: a stopped agent (SIGSTOP, or a TSTP passed
                // on) could not act on the stop signal and would only ever end SIGKILLed. Only
                // when one is stopped: an agent that handles SIGCONT gets no spurious one.
                let running = self.state.phase.agent_running();
                if signal != Sig::CONT && signal != Sig::KILL && self.agent.any_stopped(running) {
                    let _ = self.signal_group(Sig::CONT);
                }
                sent
            }
            Action::Signal {
                signal,
                to: Target::Forwarded,
            } => {
                tracing::debug!(signal = %signal, "forwarding a signal to the agent");
                match self.settings.forward_to {
                    ForwardTo::Group => self.signal_group(signal),
                    ForwardTo::Child => self.agent.signal_child(signal),
                }
            }
            Action::Kill => {
                self.sigkilled = true;
                let record = Record::Killed { pgid };
                tracing::warn!(pgid, journal = %record.json(), "sent SIGKILL to the agent's process group");
                self.signal_group(Sig::KILL)
            }
            Action::AnnounceDrain { reason, deadline } => {
                self.announce_drain(reason, deadline, ctx.now);
                let via = match (self.hub.subscribers(), ctx.drain_signal) {
                    (0, Some(sig)) => format!("drain signal {sig}"),
                    (n, None) => format!("drain event to {n} subscriber(s)"),
                    (n, Some(sig)) => {
                        format!("drain event to {n} subscriber(s) and drain signal {sig}")
                    }
                };
                let deadline_in = deadline.saturating_duration_since(ctx.now);
                let record = Record::DrainAnnounced {
                    reason,
                    deadline_in_ms: u64::try_from(deadline_in.as_millis()).unwrap_or(u64::MAX),
                    subscribers: self.hub.subscribers(),
                    drain_signal: ctx.drain_signal.map(|s| s.to_string()),
                };
                tracing::info!(
                    reason = %reason,
                    deadline_in = %format_duration(deadline_in),
                    subscribers = self.hub.has_subscribers(),
                    via = %via,
                    journal = %record.json(),
                    "told the agent to drain"
                );
                Ok(())
            }
            Action::ReadyTimedOut => {
                self.hub.ready_timed_out.notify_one();
                tracing::warn!(
                    ready_timeout = %format_duration(self.settings.ready_timeout),
                    "the agent did not become ready within --ready-timeout"
                );
                Ok(())
            }
            Action::Extended { until } => {
                self.hub.extended.notify_one();
                let left = until.saturating_duration_since(ctx.now);
                tracing::info!(until_in = %format_duration(Duration::from_millis(left.as_millis() as u64)), "the agent asked for more time");
                if let Phase::Draining(d) = self.state.phase {
                    self.announce_drain(d.reason, until, ctx.now);
                }
                Ok(())
            }
        };
        if let Err(err) = result {
            tracing::error!(pgid, error = %err, "cannot signal the agent");
        }
    }

    /// The agent's group, and the agent by its pid if it left the group; only the group once the
    /// agent has been reaped, when its pid may already be another process's.
    fn signal_group(&self, sig: Sig) -> std::io::Result<()> {
        if self.state.phase.agent_running() {
            self.agent.signal_group_and_agent(sig)
        } else {
            self.agent.signal_group(sig)
        }
    }

    /// Says when a hard deadline (a spot notice) cut a configured timeout short, and by how much.
    fn log_cut(&self, option: &str, configured: Duration, ends: Instant, ctx: &Ctx) {
        let given = ends.saturating_duration_since(ctx.now);
        if given < configured {
            let given = Duration::from_secs(given.as_secs_f64().round() as u64);
            let record = Record::TimeoutCut {
                option: option.trim_start_matches("--").to_string(),
                configured_ms: u64::try_from(configured.as_millis()).unwrap_or(u64::MAX),
                given_ms: u64::try_from(given.as_millis()).unwrap_or(u64::MAX),
            };
            tracing::warn!(
                configured = %format_duration(configured),
                given = %format_duration(given),
                journal = %record.json(),
                "{option} cut short by the spot interruption deadline"
            );
        }
    }

    fn log_transition(&self, before: &Phase, ctx: &Ctx) {
        let until = |t: Instant| format_duration(t.saturating_duration_since(ctx.now));
        let phase = &self.state.phase;
        let record = Record::PhaseChanged {
            phase: phase.name(),
            reason: phase.drain_reason(),
        }
        .json();
        match phase {
            Phase::Starting { .. } => {}
            Phase::Ready => tracing::info!(journal = %record, "agent is ready"),
            Phase::Draining(d) => {
                match before {
                    Phase::Draining(b) if d.deadline < b.deadline => {
                        tracing::warn!(deadline_in = %until(d.deadline), "drain deadline moved earlier");
                    }
                    // Moved later: the agent's extension, which `Extended` logs.
                    Phase::Draining(_) => {}
                    _ => {
                        tracing::info!(reason = %d.reason, deadline_in = %until(d.deadline), journal = %record, "draining")
                    }
                }
                self.log_cut(
                    "--drain-timeout",
                    self.settings.drain_timeout,
                    d.deadline,
                    ctx,
                );
            }
            Phase::Stopping(s) => {
                if s.killed {
                    tracing::warn!(reason = %s.reason, journal = %record, "killing the agent");
                    return;
                }
                self.log_cut("--stop-timeout", self.settings.stop_timeout, s.kill_at, ctx);
                if let Phase::Draining(_) = before {
                    tracing::info!(reason = %s.reason, sigkill_in = %until(s.kill_at), journal = %record, "drain over; stopping the agent");
                } else {
                    tracing::info!(reason = %s.reason, sigkill_in = %until(s.kill_at), journal = %record, "stopping the agent");
                }
            }
            Phase::Exited { exit, cleanup } => self.log_exit(before, exit, cleanup),
            Phase::Done(exit) => self.log_done(before, exit),
        }
    }

    fn log_exit(&self, before: &Phase, exit: &ChildExit, cleanup: &Cleanup) {
        if let Phase::Exited { .. } = before {
            if let Cleanup::Killed { .. } = cleanup {
                tracing::warn!("processes left in the agent's group outlived the grace period");
            }
            return;
        }
        let record = Record::AgentExited {
            pid: exit.pid(),
            status: exit.exit_code(),
            how: exit.to_string(),
        };
        tracing::info!(pid = exit.pid(), status = exit.exit_code(), journal = %record.json(), "agent {exit}");
    }

    fn log_done(&self, before: &Phase, exit: &ChildExit) {
        if let Phase::Exited {
            cleanup: Cleanup::Killed { .. },
            ..
        } = before
            && self.agent.group_alive()
        {
            tracing::error!(
                pgid = self.agent.pid(),
                "processes in the agent's group survived SIGKILL (uninterruptible sleep?); exiting without them"
            );
        }
        tracing::info!(
            status = exit.exit_code(),
            orphans_reaped = self.reaper.orphans_reaped(),
            "exiting"
        );
    }
}
