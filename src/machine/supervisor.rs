//! The one owner of the phase: receives events (signals, the reaper, timers, and the event
//! channel other parts send on), calls `state::step`, logs what the step says (`said`, pure),
//! publishes the new phase, then performs the actions in order.
//!
//! Publishing comes before acting so that anything reading the phase (readiness) already sees
//! the drain when the agent is told of it.
//!
//! It also owns what runs beside the agent for it: a restarted agent (`--restart`, spawned here
//! so that only this task ever reaps) and the `--on-drain` command.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::{Interval, MissedTickBehavior, interval, sleep_until};

use crate::config::{Config, ForwardTo, OnDrain};
use crate::fmt::{format_duration, rfc3339};
use crate::journal::Record;
use crate::machine::announce::Announcer;
use crate::machine::restart::RestartSettings;
use crate::machine::said::{self, Facts, Left, Said};
use crate::machine::state::{
    Action, Ctx, DrainReason, Event, Phase, ReadyOn, Restart, State, Target, step,
};
use crate::model::report::AgentReport;
use crate::model::run::{Announcement, DrainCommandStatus, DrainInfo, RunStats};
use crate::model::status::TrackedBy;
use crate::process::cgroup::{AgentCgroup, EmptyWatch};
use crate::process::child::{Agent, Launcher, SpawnError};
use crate::process::drain_command::DrainCommand;
use crate::process::exit::ChildExit;
use crate::process::reaper::Reaper;
use crate::process::sig::{Role, Sig, role};
use crate::process::signals::SignalSource;
use crate::process::upstream::Upstream;

/// How long to wait for the kernel to remove processes after SIGKILL before giving up on them.
/// Only a process stuck in uninterruptible sleep takes longer, and waiting cannot help it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often the group is checked for leftovers once the agent has exited. Members that are not
/// the guard's children raise no SIGCHLD here, so this is polled.
const GROUP_POLL: Duration = Duration::from_millis(25);

/// A safety net for a lost SIGCHLD, as tini's one-second tick is.
const REAP_TICK: Duration = Duration::from_secs(1);

/// How long the guard, done with the agent, waits for the `--on-drain` command it just killed to
/// be reaped, so that its status is logged.
const COMMAND_REAP_WITHIN: Duration = Duration::from_secs(1);

/// In [0, 1), from the clock's nanoseconds: enough to keep a fleet's restarts out of step.
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}

/// A signal that could not be sent is logged, never fatal: the timers still end the stop.
fn log_signal_error(result: std::io::Result<()>, pgid: libc::pid_t) {
    if let Err(err) = result {
        tracing::error!(pgid, error = %err, "cannot signal the agent");
    }
}

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
    pub on_drain: Option<OnDrain>,
    pub restart: RestartSettings,
    /// The control socket, for the `--on-drain` command's `AGENT_GUARD_SOCKET`.
    pub socket: PathBuf,
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
            on_drain: config.on_drain.clone(),
            restart: config.restart,
            socket: config.socket.clone(),
        }
    }
}

/// A request to stop the load balancer before the agent hears of a drain: deregister (or hold
/// for `--lb-grace`) and send [`Event::LoadBalancerDone`] by `until` at the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub reason: DrainReason,
    pub until: Instant,
}

/// How the supervisor reaches whoever stops the load balancer (the AWS side, wired by the
/// composition root): the longest wait it would need, and where holds go.
pub struct LoadBalancerLink {
    /// `None` until target groups (or `--lb-grace`) give something to wait for.
    pub wait: watch::Receiver<Option<Duration>>,
    pub holds: mpsc::Sender<Hold>,
    /// Told when a held drain is called off: the instance is registered again.
    pub called_off: std::sync::Arc<tokio::sync::Notify>,
}

/// How the supervision ended: the last agent's status, and whether the guard had to SIGKILL.
/// It exists only once that agent and its group are gone: no agent runs, and none will again.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub exit: ChildExit,
    /// SIGKILL went to the last agent's group: a status of 128+TERM is then not a clean stop.
    pub sigkilled: bool,
    /// The reason that decides how the run ended, if a drain or a stop ended it: the last one,
    /// so a scale-in that overtook an operator's drain reads `ScaleIn`; also a drain that came
    /// between an exit and a restart, when no agent ran to be drained (its termination hook
    /// still waits). Whether the termination hook is completed is decided from this alone.
    pub drain: Option<DrainReason>,
    /// The agent was ready at least once (a launch hook not completed yet is then left alone).
    pub ready: bool,
    /// The restarts ended in a crash loop (`--on-crash-loop` follows).
    pub crash_loop: bool,
    /// SIGTERM or SIGINT reached the guard during the run: the guard is to exit, whatever
    /// drain decided the run's end (a warm-pool return does not then start another run).
    pub stop_signalled: bool,
}

/// What a finished supervisor hands back for a next run in the same guard (the instance came
/// back from a warm pool and goes into service again): the channels and what it publishes stay
/// the same, so every reader and sender keeps working across runs.
pub struct Parts {
    pub launcher: Launcher,
    pub settings: StopSettings,
    pub events: (mpsc::Sender<Event>, mpsc::Receiver<Event>),
    /// The phase, which a next run starts over (`starting`).
    pub phase: watch::Sender<Phase>,
    pub out: Published,
    pub upstream: Upstream,
    pub load_balancer: Option<LoadBalancerLink>,
}

impl Parts {
    /// The phase starts over while no agent runs yet (a new run is coming, not an exit).
    pub fn start_over(&self) {
        self.phase.send_replace(State::new().phase);
    }

    /// A supervisor for the next run, the agent started anew. What was sent while no agent ran
    /// (the notices of the return itself, an operator's drain) is for the agent that is gone.
    pub fn again(mut self, signals: SignalSource) -> Result<Supervisor, SpawnError> {
        let mut dropped = 0u32;
        while self.events.1.try_recv().is_ok() {
            dropped += 1;
        }
        if dropped > 0 {
            tracing::debug!(dropped, "events sent while no agent ran are dropped");
        }
        self.start_over();
        let supervisor = Supervisor::new(
            self.launcher,
            signals,
            self.settings,
            self.events,
            self.phase,
            self.out,
            self.upstream,
        )?;
        Ok(match self.load_balancer {
            Some(link) => supervisor.with_load_balancer(link),
            None => supervisor,
        })
    }
}

/// The supervisor of one running agent.
pub struct Supervisor {
    agent: Agent,
    /// Starts the agent again (`--restart`) as it was started first.
    launcher: Launcher,
    reaper: Reaper,
    signals: SignalSource,
    events: mpsc::Receiver<Event>,
    /// Kept so the channel never closes while the supervisor runs.
    _events_tx: mpsc::Sender<Event>,
    phase: watch::Sender<Phase>,
    out: Published,
    upstream: Upstream,
    settings: StopSettings,
    state: State,
    reap_tick: Interval,
    group_poll: Interval,
    sigkilled: bool,
    /// This run's `--on-drain` command, once started.
    drain_command: Option<DrainCommand>,
    /// What an action produced for `step` (a spawn's outcome), applied before the next wait.
    queued: Option<Event>,
    /// The reason that decides, for [`Outcome::drain`].
    drain: Option<DrainReason>,
    ready: bool,
    crash_loop: bool,
    stop_signalled: bool,
    /// Who stops the load balancer first; `None`: the agent is always told at once.
    load_balancer: Option<LoadBalancerLink>,
    /// The agent's cgroup (`--cgroup`): what "gone" means, where signals and SIGKILL go.
    cgroup: Option<std::sync::Arc<AgentCgroup>>,
    /// Woken when the cgroup's `populated` changes; without it the cgroup is polled.
    empty_watch: Option<EmptyWatch>,
    /// The cgroup's OOM kills when the current agent started.
    oom_before: u64,
}

/// What the supervisor tells the lifecycle work as it happens; everything else it needs is the
/// phase (a `watch`) and, at the end, the [`Outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToLifecycle {
    /// The agent asked for more time: heartbeat now.
    Extended,
    /// `--ready-timeout` ran out: the launch hook is abandoned.
    ReadyTimedOut,
}

/// What the supervisor publishes, each with this task as its only writer, and what it reads of
/// the agent's own reports.
pub struct Published {
    /// Its run: pids, exits, restarts, drains (as metrics), the drain command.
    pub run: watch::Sender<RunStats>,
    /// Its last wake-up: a stuck loop fails /livez.
    pub tick: watch::Sender<Instant>,
    /// Phase changes and drains, to subscribers.
    pub announcer: Announcer,
    /// Typed messages to the lifecycle work (none listens when no hook is configured).
    pub told: mpsc::Sender<ToLifecycle>,
    /// The agent's reports: whether it set its own `STATUS=`.
    pub report: watch::Receiver<AgentReport>,
}

impl Published {
    fn run(&self, f: impl FnOnce(&mut RunStats)) {
        self.run.send_modify(f);
    }

    fn tell(&self, told: ToLifecycle) {
        // Bounded and never awaited: a lifecycle work that is gone, or behind by a queue of
        // extensions, loses nothing it needs (one heartbeat per queue is enough).
        let _ = self.told.try_send(told);
    }
}

/// What woke the supervisor up.
enum Wake {
    Signal(Sig),
    Event(Event),
    Timer,
    ReapTick,
    GroupPoll,
    /// The drain deadline passed with the `--on-drain` command still running.
    DrainCommandDue,
}

impl Supervisor {
    /// Starts the agent and supervises it. `signals` must have been installed before: a signal
    /// that arrives while the agent starts is kept, not lost.
    pub fn new(
        launcher: Launcher,
        signals: SignalSource,
        settings: StopSettings,
        events: (mpsc::Sender<Event>, mpsc::Receiver<Event>),
        phase: watch::Sender<Phase>,
        out: Published,
        upstream: Upstream,
    ) -> Result<Self, SpawnError> {
        let cgroup = launcher.cgroup.clone();
        // Watched from before the agent starts, so that no change of `populated` is missed.
        let empty_watch = cgroup.as_ref().and_then(|c| {
            c.watch()
                .map_err(|err| tracing::warn!(error = %err, "polling the agent's cgroup instead"))
                .ok()
        });
        let oom_before = cgroup.as_ref().and_then(|c| c.oom_kills()).unwrap_or(0);
        let agent = launcher.spawn()?;
        if let Some(cgroup) = &cgroup {
            cgroup.sweep_stale();
        }
        out.run(|run| {
            run.agent_pid = Some(agent.pid());
            run.agent_started = Some(Instant::now());
            run.agent_cgroup = cgroup.as_ref().map(|c| c.path().to_path_buf());
            run.runs.policy = settings.restart.policy;
        });
        let mut reap_tick = interval(REAP_TICK);
        reap_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut group_poll = interval(GROUP_POLL);
        group_poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Supervisor {
            agent,
            launcher,
            // Only after the spawn returned: std's spawn waits for a child whose exec failed.
            reaper: Reaper::new(agent.pid()),
            signals,
            events: events.1,
            _events_tx: events.0,
            phase,
            out,
            upstream,
            settings,
            state: State::new(),
            reap_tick,
            group_poll,
            sigkilled: false,
            drain_command: None,
            queued: None,
            drain: None,
            ready: false,
            crash_loop: false,
            stop_signalled: false,
            load_balancer: None,
            cgroup,
            empty_watch,
            oom_before,
        })
    }

    /// Stop the load balancer through `link` before the agent hears of a drain that ends the
    /// instance where the group does not deregister it.
    pub fn with_load_balancer(mut self, link: LoadBalancerLink) -> Self {
        self.load_balancer = Some(link);
        self
    }

    /// Whether anything of the agent is left: a process in its cgroup, or else a live member of
    /// its process group.
    fn alive(&self) -> bool {
        match &self.cgroup {
            Some(cgroup) => cgroup.populated(),
            None => self.agent.group_alive(),
        }
    }

    /// What stands for the agent's processes, as `/status` and the journal name it.
    fn tracked_by(&self) -> TrackedBy {
        match self.cgroup {
            Some(_) => TrackedBy::Cgroup,
            None => TrackedBy::ProcessGroup,
        }
    }

    /// What is left of the agent's processes now, if anything.
    fn left(&self) -> Option<Left> {
        self.alive().then(|| Left {
            processes: self.cgroup.as_ref().map(|c| c.pids().len() as u64),
        })
    }

    /// What [`said`] needs of this step beside the step itself.
    fn facts<'a>(&self, ctx: &'a Ctx, left: Option<Left>) -> Facts<'a> {
        Facts {
            ctx,
            tracked_by: self.tracked_by(),
            left,
            pgid: self.agent.pid(),
            orphans_reaped: self.reaper.orphans_reaped(),
            subscribers: self.out.announcer.listeners(),
        }
    }

    /// `exit`, sealed with the proof that nothing of the agent is left, where that holds now.
    fn prove_gone(&self, exit: ChildExit) -> ChildExit {
        match &self.cgroup {
            Some(cgroup) => cgroup.prove_empty(exit),
            None => self.agent.prove_group_gone(exit),
        }
    }

    /// Runs until the last agent and its process group are gone; returns how it ended, the
    /// signal stream for whoever waits on signals after it (the one stream of the process), and
    /// what a next run would be made of.
    pub async fn run(mut self) -> (Outcome, SignalSource, Parts) {
        tracing::info!(pid = self.agent.pid(), "agent started");
        self.apply(Event::Spawned);
        loop {
            if let Phase::Done(exit) = &self.state.phase {
                let exit = self.prove_gone(exit.clone());
                self.end_drain_command().await;
                let outcome = Outcome {
                    exit,
                    sigkilled: self.sigkilled,
                    drain: self.drain,
                    ready: self.ready,
                    crash_loop: self.crash_loop,
                    stop_signalled: self.stop_signalled,
                };
                let parts = Parts {
                    launcher: self.launcher,
                    settings: self.settings,
                    events: (self._events_tx, self.events),
                    phase: self.phase,
                    out: self.out,
                    upstream: self.upstream,
                    load_balancer: self.load_balancer,
                };
                return (outcome, self.signals, parts);
            }
            let woke = self.wait().await;
            self.out.tick.send_replace(Instant::now());
            let event = match woke {
                Wake::Signal(sig) => self.on_signal(sig),
                Wake::Event(event) => Some(event),
                Wake::Timer => Some(Event::Timer),
                Wake::ReapTick => self.reap(),
                Wake::GroupPoll => {
                    // Look, then reap: "gone" means every member left is a zombie, and those
                    // that are the guard's own (orphans it adopted) must not outlive the run.
                    // Reaping first would race a leftover that exits between the reap and the
                    // look: the group would read as gone with that zombie never reaped.
                    let gone = !self.alive();
                    let _ = self.reap();
                    gone.then_some(Event::GroupGone)
                }
                Wake::DrainCommandDue => {
                    self.kill_drain_command("at the drain deadline");
                    None
                }
            };
            if let Some(event) = event {
                self.apply(event);
            }
        }
    }

    async fn wait(&mut self) -> Wake {
        let deadline = self.state.phase.deadline();
        let cleaning = matches!(
            self.state.phase,
            Phase::Exited { .. }
                | Phase::Restarting(Restart {
                    cleanup: Some(_),
                    ..
                })
        );
        let far = || Instant::now() + Duration::from_secs(86_400);
        let timer_at = tokio::time::Instant::from_std(deadline.unwrap_or_else(far));
        let command_due = self.drain_command.as_ref().and_then(DrainCommand::due);
        // With a cgroup the kernel says when it empties; a look first, as the change that
        // matters may have been drained from the watch by an earlier wake.
        let watched = cleaning && self.cgroup.is_some() && self.empty_watch.is_some();
        if watched && !self.alive() {
            return Wake::GroupPoll;
        }
        let emptied = async {
            match self.empty_watch.as_mut() {
                Some(watch) if watched => watch.changed().await,
                _ => std::future::pending().await,
            }
        };
        let command_at = tokio::time::Instant::from_std(command_due.unwrap_or_else(far));
        tokio::select! {
            biased;
            sig = self.signals.next() => match sig {
                Some(sig) => Wake::Signal(sig),
                None => Wake::ReapTick,
            },
            Some(event) = self.events.recv() => Wake::Event(event),
            _ = sleep_until(timer_at), if deadline.is_some() => Wake::Timer,
            _ = emptied => Wake::GroupPoll,
            _ = self.group_poll.tick(), if cleaning && !watched => Wake::GroupPoll,
            _ = sleep_until(command_at), if command_due.is_some() => Wake::DrainCommandDue,
            _ = self.reap_tick.tick() => Wake::ReapTick,
        }
    }

    /// Reaps every child that exited: the agent's exit is an event; the `--on-drain` command's
    /// status is logged here.
    fn reap(&mut self) -> Option<Event> {
        let agent = self.reaper.reap();
        for (pid, kind) in self.reaper.take_watched() {
            let Some(command) = self.drain_command.as_mut().filter(|c| c.pid() == pid) else {
                continue;
            };
            command.reaped();
            let record = Record::DrainCommandEnded {
                pid,
                status: kind.status(),
                how: kind.to_string(),
                killed: command.killed(),
            };
            tracing::info!(pid, status = kind.status(), journal = %record.json(), "the --on-drain command {kind}");
            self.out.run(|run| {
                if let Some(shown) = run.runs.drain_command.as_mut() {
                    shown.status = Some(kind.status());
                }
            });
        }
        agent
            .map(|exit| match &self.cgroup {
                Some(cgroup) => cgroup.note_oom(exit, self.oom_before),
                None => exit,
            })
            .map(Event::ChildExited)
    }

    fn on_signal(&mut self, sig: Sig) -> Option<Event> {
        match role(sig) {
            Role::Reap => {
                let exited = self.reap();
                // ^Z on the terminal the agent's group holds stopped the agent, not the guard:
                // the shell waiting for the guard would hang.
                if exited.is_none()
                    && self.launcher.job_control.terminal()
                    && self.reaper.take_job_control_stop()
                {
                    self.stop_guard_too();
                }
                exited
            }
            Role::Suspend => {
                // As dumb-init does: pass it on, then stop the guard as well.
                self.apply(Event::Forward(sig));
                self.stop_guard_too();
                None
            }
            Role::Stop => {
                self.stop_signalled = true;
                let record = Record::StopSignalReceived { signal: sig };
                tracing::info!(signal = %sig, journal = %record.json(), "received a stop signal");
                Some(Event::StopSignal)
            }
            Role::Forward => Some(Event::Forward(sig)),
        }
    }

    /// Stops the guard until SIGCONT; a stop report of the agent's that came meanwhile is one
    /// this stop already answered.
    fn stop_guard_too(&mut self) {
        self.agent.stop_guard_too();
        let _ = self.reaper.take_job_control_stop();
    }

    /// Feeds `event` to `step`, then whatever the actions produced for it (a spawn's outcome).
    fn apply(&mut self, event: Event) {
        let mut next = Some(event);
        while let Some(event) = next {
            self.apply_one(event);
            next = self.queued.take();
        }
    }

    fn apply_one(&mut self, event: Event) {
        let ctx = Ctx {
            now: Instant::now(),
            stop_signal: self.settings.stop_signal,
            stop_timeout: self.settings.stop_timeout,
            drain_timeout: self.settings.drain_timeout,
            drain_signal: self.settings.drain_signal,
            listeners: self.out.announcer.listeners() > 0,
            kill_wait: KILL_WAIT,
            ready_on: self.settings.ready_on,
            ready_timeout: self.settings.ready_timeout,
            drain_command: self.settings.on_drain.is_some(),
            restart: self.settings.restart,
            jitter: jitter(),
            load_balancer: self.load_balancer.as_ref().and_then(|l| *l.wait.borrow()),
        };
        let before = self.state.phase.clone();
        let seen = event.clone();
        let agent_exited = matches!(event, Event::ChildExited(_)) && before.agent_running();
        let (next, actions) = step(&self.state, event, &ctx);
        self.state = next;
        if agent_exited {
            self.out.run(|run| run.runs.exits += 1);
        }
        if let Some(reason) = self.state.phase.drain_reason() {
            self.decided(reason);
        }
        // The command lives until the drain's deadline, wherever an extension or a spot
        // notice moves it.
        if let (Phase::Draining(d), Some(command)) = (&self.state.phase, &mut self.drain_command) {
            command.kill_at = d.deadline;
        }
        let left = matches!(self.state.phase, Phase::Exited { .. } | Phase::Done(_))
            .then(|| self.left())
            .flatten();
        let facts = self.facts(&ctx, left);
        for line in said::of_step(&seen, &before, &self.state.phase, &facts) {
            line.log();
        }
        if before != self.state.phase {
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
        // Subscribers hear of a restart as `starting`, even when the agent was not ready yet.
        let restart_begins = matches!(phase, Phase::Restarting(_)) && before.agent_running();
        if before.name() == phase.name() && !restart_begins {
            return;
        }
        self.out.run(|stats| {
            stats.phase_since = SystemTime::now();
            let drain_started = matches!(before, Phase::Starting { .. } | Phase::Ready);
            if let (Some(reason), true) = (phase.drain_reason(), drain_started) {
                *stats.drains.entry(reason).or_insert(0) += 1;
            }
            if let Phase::Exited { exit, .. } | Phase::Restarting(Restart { last: exit, .. }) =
                &phase
            {
                stats.agent_exit = Some(exit.exit_code());
            }
        });
        if let Phase::Ready = phase {
            let source = match self.settings.ready_on {
                ReadyOn::Start => "start",
                ReadyOn::Warmup(_) => "warm-up",
                ReadyOn::Notify => "notify",
                ReadyOn::Health => "health",
            };
            self.ready = true;
            self.out.run(|run| {
                run.ready_source.get_or_insert(source);
            });
            self.upstream.send("READY=1");
        }
        if phase.drain_reason().is_some() && before.drain_reason().is_none() {
            self.upstream.send("STOPPING=1");
        }
        if self.out.report.borrow().status.is_none() {
            self.upstream
                .send(&format!("STATUS=agent {}", phase.name()));
        }
        self.out
            .announcer
            .announce(Announcement::Phase(phase.name()));
    }

    fn announce_drain(&self, reason: DrainReason, deadline: Instant, now: Instant) {
        let left = deadline.saturating_duration_since(now);
        let info = DrainInfo {
            reason,
            deadline: crate::fmt::wall_after(SystemTime::now(), left),
            deadline_at: deadline,
        };
        self.out.run(|run| run.drain = Some(info.clone()));
        self.out.announcer.announce(Announcement::Drain(info));
    }

    /// The stop signal to the agent's group (and SIGCONT to a stopped agent after it).
    fn stop_signal_to_group(&self, signal: Sig, pgid: i32) -> std::io::Result<()> {
        if !self.state.phase.agent_running() && !self.alive() {
            return Ok(()); // the agent left nothing behind
        }
        let record = Record::StopSignalSent {
            signal,
            pgid,
            cgroup: self.cgroup.is_some(),
        };
        if let Some(cgroup) = &self.cgroup {
            tracing::info!(signal = %signal, pgid, journal = %record.json(), "sent the stop signal to every process in the agent's cgroup");
            let sent = cgroup.signal_all(signal).map(|_| ());
            if signal != Sig::CONT && signal != Sig::KILL && cgroup.any_stopped() {
                let _ = cgroup.signal_all(Sig::CONT);
            }
            return sent;
        }
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

    /// A signal passed on to the agent (`--forward-to`).
    fn forward(&self, signal: Sig) -> std::io::Result<()> {
        tracing::debug!(signal = %signal, "forwarding a signal to the agent");
        match self.settings.forward_to {
            ForwardTo::Group => self.signal_group(signal),
            ForwardTo::Child => self.agent.signal_child(signal),
        }
    }

    fn perform(&mut self, action: Action, ctx: &Ctx) {
        let pgid = self.agent.pid();
        // Said before it is done; the announcement once made, with whom it reached.
        let line = said::of_action(&action, &self.state.phase, &self.facts(ctx, None));
        let announces = matches!(action, Action::AnnounceDrain { .. });
        if !announces {
            line.iter().for_each(Said::log);
        }
        let result = match action {
            Action::Signal {
                signal,
                to: Target::Group,
            } => self.stop_signal_to_group(signal, pgid),
            Action::Signal {
                signal,
                to: Target::Forwarded,
            } => self.forward(signal),
            Action::Kill => {
                self.sigkilled = true;
                match &self.cgroup {
                    Some(cgroup) => cgroup.kill(),
                    None => self.signal_group(Sig::KILL),
                }
            }
            Action::AnnounceDrain { reason, deadline } => {
                self.announce_drain(reason, deadline, ctx.now);
                line.iter().for_each(Said::log);
                Ok(())
            }
            Action::ReadyTimedOut => {
                self.out.tell(ToLifecycle::ReadyTimedOut);
                Ok(())
            }
            Action::Extended { until } => {
                self.out.tell(ToLifecycle::Extended);
                if let Phase::Draining(d) = self.state.phase {
                    self.announce_drain(d.reason, until, ctx.now);
                }
                Ok(())
            }
            Action::RunDrainCommand { reason, deadline } => {
                self.start_drain_command(reason, deadline, ctx.now);
                Ok(())
            }
            Action::Spawn => {
                self.respawn();
                Ok(())
            }
            Action::CrashLoop { .. } => {
                self.crash_loop = true;
                self.out.run(|run| run.runs.crash_loop = true);
                Ok(())
            }
            Action::RestartCancelled { reason } => {
                self.restart_cancelled(reason);
                Ok(())
            }
            Action::DrainAfterExit { reason } => self.drain_after_exit(reason),
            Action::HoldForLoadBalancer { reason, until } => {
                self.hold_for_load_balancer(reason, until, ctx.now);
                Ok(())
            }
            Action::DrainSkipped { .. } => Ok(()),
            Action::RegisterAgain { reason } => {
                tracing::info!(reason = %reason, "the drain was called off before the agent heard of it: ready again");
                if let Some(link) = &self.load_balancer {
                    link.called_off.notify_one();
                }
                Ok(())
            }
        };
        log_signal_error(result, pgid);
    }

    /// Hands the hold to the load balancer's side; without one, the agent is told at once.
    fn hold_for_load_balancer(&mut self, reason: DrainReason, until: Instant, now: Instant) {
        let sent = self
            .load_balancer
            .as_ref()
            .is_some_and(|l| l.holds.try_send(Hold { reason, until }).is_ok());
        if !sent {
            self.queued = Some(Event::LoadBalancerDone);
            return;
        }
        if until > now {
            tracing::info!(
                reason = %reason,
                at_most = %format_duration(until - now),
                "readiness is 503: stopping the load balancer before the agent hears of the drain"
            );
        }
    }

    /// Runs the `--on-drain` command for this drain: spawned from this task, so that no reap
    /// runs during the spawn, and its pid handed to the reaper before the next one.
    fn start_drain_command(&mut self, reason: DrainReason, deadline: Instant, now: Instant) {
        let Some(command) = &self.settings.on_drain else {
            return;
        };
        if self.drain_command.is_some() {
            return; // one drain per run, one command per drain
        }
        let wall_deadline = SystemTime::now() + deadline.saturating_duration_since(now);
        let env: Vec<(OsString, OsString)> = vec![
            ("AGENT_GUARD_DRAIN_REASON".into(), reason.as_str().into()),
            (
                "AGENT_GUARD_DRAIN_DEADLINE".into(),
                rfc3339(wall_deadline).into(),
            ),
            (
                "AGENT_GUARD_AGENT_PID".into(),
                self.agent.pid().to_string().into(),
            ),
            (
                "AGENT_GUARD_SOCKET".into(),
                self.settings.socket.clone().into(),
            ),
        ];
        let cgroup = self.cgroup.as_ref().and_then(|c| {
            c.on_drain()
                .map_err(|err| tracing::warn!(error = %err, "the --on-drain command runs in its process group only"))
                .ok()
        });
        match DrainCommand::start(command, env, self.launcher.job_control, deadline, cgroup) {
            Ok(started) => {
                let pid = started.pid();
                self.reaper.watch(pid);
                self.drain_command = Some(started);
                self.out.run(|run| {
                    run.runs.drain_command = Some(DrainCommandStatus {
                        pid,
                        started: SystemTime::now(),
                        status: None,
                        killed: false,
                    });
                });
                let record = Record::DrainCommandStarted { pid, reason };
                tracing::info!(pid, reason = %reason, journal = %record.json(), "started the --on-drain command");
            }
            Err(err) => {
                let record = Record::DrainCommandFailed {
                    error: err.to_string(),
                };
                let told =
                    self.out.announcer.listeners() > 0 || self.settings.drain_signal.is_some();
                let then = if told {
                    "the drain goes on"
                } else {
                    "nothing else can tell the agent, so it gets its stop signal now"
                };
                tracing::error!(error = %err, journal = %record.json(), "cannot start the --on-drain command; {then}");
                self.queued = Some(Event::DrainCommandFailed);
            }
        }
    }

    /// SIGKILLs the `--on-drain` command's group, if anything of it is left.
    fn kill_drain_command(&mut self, when: &str) {
        let Some(command) = self.drain_command.as_mut() else {
            return;
        };
        match command.kill() {
            Ok(true) => {
                tracing::warn!(pid = command.pid(), "killed the --on-drain command {when}");
                self.out.run(|run| {
                    if let Some(shown) = run.runs.drain_command.as_mut() {
                        shown.killed = true;
                    }
                });
            }
            Ok(false) => {}
            Err(err) => {
                tracing::error!(pid = command.pid(), error = %err, "cannot kill the --on-drain command");
            }
        }
    }

    /// The agent is gone, and with it the drain: the command is killed if it still runs, and
    /// reaped within a bound so that its status is logged. With a cgroup, what it started is
    /// killed with it and waited for too, within the same bound: the hook is completed only
    /// after this returns.
    async fn end_drain_command(&mut self) {
        if self.drain_command.is_none() {
            return;
        }
        self.kill_drain_command("now that the agent is gone");
        let give_up = tokio::time::Instant::now() + COMMAND_REAP_WITHIN;
        let left = |s: &Self| {
            s.drain_command
                .as_ref()
                .is_some_and(|c| c.running() || c.leftovers())
        };
        while left(self) && tokio::time::Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = self.reap();
        }
        if let Some(command) = self.drain_command.take() {
            if command.leftovers() {
                tracing::error!(
                    pid = command.pid(),
                    "processes of the --on-drain command in {} survived SIGKILL (uninterruptible sleep?); exiting without them",
                    command.tracked_in()
                );
            }
            command.finish().await;
        }
    }

    /// Starts the agent again. Only this task reaps and nothing reaps during the spawn, so std's
    /// own wait for a failed exec cannot lose its child, and the new pid reaches the reaper first.
    fn respawn(&mut self) {
        let attempt = match &self.state.phase {
            Phase::Restarting(r) => r.attempt,
            _ => 0,
        };
        match self.launcher.respawn(&self.agent) {
            Ok(agent) => {
                self.agent = agent;
                self.oom_before = self
                    .cgroup
                    .as_ref()
                    .and_then(|c| c.oom_kills())
                    .unwrap_or(0);
                self.reaper.set_agent(agent.pid());
                // A SIGKILL of the last agent's leftovers says nothing about this one.
                self.sigkilled = false;
                self.out.run(|run| {
                    run.agent_pid = Some(agent.pid());
                    run.agent_started = Some(Instant::now());
                    run.runs.restarts += 1;
                });
                let record = Record::AgentRestarted {
                    pid: agent.pid(),
                    attempt,
                };
                tracing::info!(pid = agent.pid(), attempt, journal = %record.json(), "agent started again");
                self.queued = Some(Event::Spawned);
            }
            Err(err) => {
                tracing::error!(error = %err, attempt, "cannot start the agent again");
                self.queued = Some(Event::SpawnFailed);
            }
        }
    }

    /// A stop or a drain came while no agent ran: none starts again, and the run ends with the
    /// last status. The drain counts as one, so that its termination hook is still completed.
    fn restart_cancelled(&mut self, reason: DrainReason) {
        self.decided(reason);
        self.out
            .run(|run| *run.drains.entry(reason).or_insert(0) += 1);
        tracing::info!(reason = %reason, "stopping during the restart delay: the agent is not started again");
    }

    /// A drain came once the agent had exited by itself: nothing is left to tell, but the drain
    /// decides how the run ends, so that a scale-in's termination hook is still completed.
    /// Sends no signal, so never fails (the result is `perform`'s).
    fn drain_after_exit(&mut self, reason: DrainReason) -> std::io::Result<()> {
        self.decided(reason);
        self.out
            .run(|run| *run.drains.entry(reason).or_insert(0) += 1);
        tracing::info!(reason = %reason, "drain after the agent exited by itself: nothing left to tell; it decides how the run ends once every process of the agent is gone");
        Ok(())
    }

    /// A drain or stop reason in force now: the one that decides how the run ends (a scale-in
    /// overtakes an operator's drain; nothing overtakes a drain that ends the instance). The
    /// drain the agent and `/status` see follows it.
    fn decided(&mut self, reason: DrainReason) {
        let decided = self.drain.map_or(reason, |before| before.then(reason));
        if self.drain != Some(decided) {
            self.out.run(|run| {
                if let Some(shown) = run.drain.as_mut() {
                    shown.reason = decided;
                }
            });
        }
        self.drain = Some(decided);
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
}
