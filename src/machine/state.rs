//! The supervisor's state machine: phases, events and actions, and the pure `step` between them.
//!
//! Nothing here does I/O or reads a clock: `step` is given the time and the settings it needs in a
//! [`Ctx`], and returns the next state plus the actions to perform, in order. `supervisor.rs` is the
//! one place that feeds events in and performs actions, so every transition is testable as a table.

use std::time::{Duration, Instant};

use crate::process::sig::Sig;

pub use crate::config::settings::ReadyOn;
pub use crate::model::{DrainReason, PhaseName};

use crate::machine::restart::{Decision, History, RestartSettings};
use crate::process::exit::ChildExit;

/// What is left of the agent's process group once the agent itself has been reaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// Members may remain; they were sent the stop signal and get SIGKILL at `kill_at`.
    Signalled { kill_at: Instant },
    /// SIGKILL was sent; past `give_up_at` the guard stops waiting for the kernel to remove them.
    Killed { give_up_at: Instant },
}

/// A drain in progress: readiness is 503. Once `told`, the agent has until `deadline` to say it
/// is drained or exit; before, the load balancer is given until `deadline` to stop sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub reason: DrainReason,
    pub deadline: Instant,
    /// The agent was told of the drain; until then the guard waits for the load balancer.
    pub told: bool,
    /// The latest moment SIGKILL may come (a spot notice's time minus the margin).
    pub hard_deadline: Option<Instant>,
    /// A SIGTERM/SIGINT was received already: the next one kills at once.
    pub signalled: bool,
}

/// The stop sequence in progress: the stop signal went to the agent's group, and SIGKILL
/// follows at `kill_at` unless it exits first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub reason: DrainReason,
    pub kill_at: Instant,
    /// The latest moment SIGKILL may come; an extension never passes it.
    pub hard_deadline: Option<Instant>,
    /// SIGKILL was sent.
    pub killed: bool,
    /// A SIGTERM/SIGINT was received already: the next one kills at once.
    pub signalled: bool,
}

/// Between an agent that exited by itself and its next start (`--restart`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// How the last agent ended: the guard's status if the run ends before the next start. It
    /// is only ever the proof of an agent that is gone: the phase drops it when the next starts.
    pub last: ChildExit,
    /// Restarts since the delay was last reset, this one included.
    pub attempt: u32,
    /// The next start, once `cleanup` is over.
    pub at: Instant,
    /// What is left of the last agent's group, cleared before the next start; `None` once gone.
    pub cleanup: Option<Cleanup>,
}

/// The one phase of the supervisor. Each variant carries what only makes sense in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The agent runs but is not ready yet.
    Starting {
        /// With `--ready-on DUR`: when the warm-up is over and the agent counts as ready.
        warm_until: Option<Instant>,
        /// When `--ready-timeout` runs out (the launch hook is then abandoned); `None` once past.
        give_up_at: Option<Instant>,
    },
    /// The agent is ready: readiness answers 200.
    Ready,
    /// The agent has been told to drain.
    Draining(Drain),
    /// The stop signal went to the agent's group.
    Stopping(Stop),
    /// The agent exited by itself and is to be started again; none runs meanwhile. The outside
    /// world sees `starting`.
    Restarting(Restart),
    /// The agent was reaped; the rest of its process group is being cleared.
    Exited { exit: ChildExit, cleanup: Cleanup },
    /// The agent and its group are gone: the supervisor returns `exit`.
    Done(ChildExit),
}

impl Phase {
    /// The phase as the outside world names it.
    pub fn name(&self) -> PhaseName {
        match self {
            Phase::Starting { .. } | Phase::Restarting(_) => PhaseName::Starting,
            Phase::Ready => PhaseName::Ready,
            Phase::Draining(_) => PhaseName::Draining,
            Phase::Stopping(_) => PhaseName::Stopping,
            Phase::Exited { .. } | Phase::Done(_) => PhaseName::Exited,
        }
    }

    /// When the supervisor must feed [`Event::Timer`] if nothing else happens first.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Phase::Starting {
                warm_until,
                give_up_at,
            } => match (warm_until, give_up_at) {
                (Some(a), Some(b)) => Some((*a).min(*b)),
                (a, b) => a.or(*b),
            },
            Phase::Draining(d) => Some(d.deadline),
            Phase::Stopping(s) if !s.killed => Some(s.kill_at),
            Phase::Restarting(r) => Some(match r.cleanup {
                Some(Cleanup::Signalled { kill_at }) => kill_at,
                Some(Cleanup::Killed { give_up_at }) => give_up_at,
                None => r.at,
            }),
            Phase::Exited {
                cleanup: Cleanup::Signalled { kill_at },
                ..
            } => Some(*kill_at),
            Phase::Exited {
                cleanup: Cleanup::Killed { give_up_at },
                ..
            } => Some(*give_up_at),
            _ => None,
        }
    }

    /// Why the agent is being drained or stopped, if it is.
    pub fn drain_reason(&self) -> Option<DrainReason> {
        match self {
            Phase::Draining(d) => Some(d.reason),
            Phase::Stopping(s) => Some(s.reason),
            _ => None,
        }
    }

    /// Whether the agent process is still running (it has not been reaped).
    pub fn agent_running(&self) -> bool {
        !matches!(
            self,
            Phase::Exited { .. } | Phase::Done(_) | Phase::Restarting(_)
        )
    }

    /// Whether the run is ending: the last agent was reaped and no other will start.
    pub fn ended(&self) -> bool {
        matches!(self, Phase::Exited { .. } | Phase::Done(_))
    }
}

/// Something that happened, fed to [`step`] by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The agent was spawned: start the readiness clock.
    Spawned,
    /// The agent could not be started again (`--restart`); it counts as a start that failed.
    SpawnFailed,
    /// The agent counts as ready.
    Ready,
    /// The agent asks for more time: the current bound (drain deadline, or grace before
    /// SIGKILL) moves to at least now + this, never past a hard deadline.
    Extend(Duration),
    /// SIGTERM or SIGINT reached the guard.
    StopSignal,
    /// A notice or an operator asks for a drain; `hard_deadline` bounds SIGKILL (spot).
    Drain {
        reason: DrainReason,
        hard_deadline: Option<Instant>,
        /// The operator asked for deregistration (`drain --deregister`); the reasons that
        /// always deregister ([`DrainReason::deregisters`]) need not say so.
        deregister: bool,
    },
    /// The load balancer stopped sending to the instance (or the wait for it ended): the agent
    /// may now be told of the drain.
    LoadBalancerDone,
    /// What asked for a drain of this reason called it off (a canceled maintenance event): if
    /// the agent has not heard of it yet, the guard is ready again and the instance is
    /// registered in its target groups again.
    DrainCalledOff(DrainReason),
    /// The agent reported that it is drained.
    Drained,
    /// The `--on-drain` command could not start: an agent with no other way to hear of the
    /// drain is not waited for.
    DrainCommandFailed,
    /// A signal to pass through to the agent.
    Forward(Sig),
    /// The current phase's deadline was reached.
    Timer,
    /// The reaper collected the agent's status.
    ChildExited(ChildExit),
    /// No process remains in the agent's process group.
    GroupGone,
}

/// Where a signal goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The agent's whole process group.
    Group,
    /// Where `--forward-to` says forwarded signals go.
    Forwarded,
}

/// Something the supervisor must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `signal` to `to`.
    Signal { signal: Sig, to: Target },
    /// SIGKILL the agent's whole process group.
    Kill,
    /// Tell the agent's listeners that a drain started, and until when.
    AnnounceDrain {
        reason: DrainReason,
        deadline: Instant,
    },
    /// The agent did not become ready within `--ready-timeout`.
    ReadyTimedOut,
    /// A bound was extended at the agent's request.
    Extended { until: Instant },
    /// Run the `--on-drain` command for this drain (it is killed at `deadline`).
    RunDrainCommand {
        reason: DrainReason,
        deadline: Instant,
    },
    /// Start the agent again; the outcome comes back as `Spawned` or `SpawnFailed`.
    Spawn,
    /// `starts` starts within `within`: the restarts end (`--on-crash-loop` follows the run).
    CrashLoop { starts: u32, within: Duration },
    /// A stop or a drain came between an agent's exit and its restart: none is started again.
    RestartCancelled { reason: DrainReason },
    /// A drain came after the agent had exited by itself, while its leftovers are cleared:
    /// nothing is left to tell, but the drain decides how the run ends (a scale-in's termination
    /// hook is completed once everything of the agent is gone).
    DrainAfterExit { reason: DrainReason },
    /// Deregister the instance from its load balancers (or hold readiness at 503 for
    /// `--lb-grace`) and answer [`Event::LoadBalancerDone`], by `until` at the latest; an
    /// `until` that is already past asks for the deregistration without the wait.
    HoldForLoadBalancer { reason: DrainReason, until: Instant },
    /// A held drain was called off before the agent heard of it: register the instance in its
    /// target groups again.
    RegisterAgain { reason: DrainReason },
    /// A drain was asked for but the agent goes straight to its stop signal: said, with why,
    /// because no drain event, `--drain-signal` or `--on-drain` follows.
    DrainSkipped {
        reason: DrainReason,
        why: DrainSkipped,
    },
}

/// Why a drain went straight to the stop signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainSkipped {
    /// Nothing could tell the agent: no subscriber, no `--drain-signal`, no `--on-drain`.
    NoWayToTell,
    /// The hard deadline (a spot interruption) leaves `left`, no more than `--stop-timeout`:
    /// all of it goes to the stop grace.
    NoTimeLeft { left: Duration },
}

/// What `step` needs besides the state and the event: the time and the stop settings.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub now: Instant,
    pub stop_signal: Sig,
    pub stop_timeout: Duration,
    pub drain_timeout: Duration,
    pub drain_signal: Option<Sig>,
    /// Whether anyone listens for drain announcements (subscribers on the control socket).
    pub listeners: bool,
    /// How long to wait for the kernel to remove processes after SIGKILL before giving up.
    pub kill_wait: Duration,
    pub ready_on: ReadyOn,
    pub ready_timeout: Duration,
    /// An `--on-drain` command is configured: it tells the agent of a drain.
    pub drain_command: bool,
    pub restart: RestartSettings,
    /// In [0, 1), fresh for each event: spreads restart delays (0 in tests gives exact ones).
    pub jitter: f64,
    /// There is a load balancer to stop first (target groups, or `--lb-grace`), and the longest
    /// the guard would wait for it; `None`: the agent is told at once.
    pub load_balancer: Option<Duration>,
}

impl Ctx {
    /// Whether the agent has any way to hear of a drain; without one, waiting for it is in vain.
    fn agent_can_hear_drain(&self) -> bool {
        self.drain_signal.is_some() || self.listeners || self.drain_command
    }
}

/// The supervisor's whole state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub phase: Phase,
    /// The agent's starts in this run, for the restart delay and the crash-loop window.
    pub history: History,
}

impl State {
    pub fn new() -> Self {
        State {
            phase: Phase::Starting {
                warm_until: None,
                give_up_at: None,
            },
            history: History::default(),
        }
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

/// The transition function. An event that does not fit the phase is a no-op, never a panic.
pub fn step(state: &State, event: Event, ctx: &Ctx) -> (State, Vec<Action>) {
    let mut history = state.history.clone();
    if event == Event::Spawned {
        history.started(ctx.now, &ctx.restart);
    }
    let (phase, actions) = match (&state.phase, event) {
        // Before or after readiness, an agent that exits by itself may be started again.
        (Phase::Starting { .. } | Phase::Ready, Event::ChildExited(exit)) => {
            exited_by_itself(exit, &mut history, ctx)
        }
        (
            Phase::Starting {
                warm_until,
                give_up_at,
            },
            event,
        ) => starting(*warm_until, *give_up_at, event, ctx),
        (Phase::Ready, event) => ready(event, ctx),
        (Phase::Draining(d), event) => draining(*d, event, ctx),
        (Phase::Stopping(s), event) => stopping(*s, event, ctx),
        (Phase::Restarting(r), event) => restarting(r, event, &mut history, ctx),
        (
            Phase::Exited { exit, cleanup },
            Event::Drain {
                reason,
                hard_deadline,
                ..
            },
        ) => drain_after_exit(exit, cleanup, reason, hard_deadline),
        (Phase::Exited { exit, cleanup }, event) => exited(exit, cleanup, event, ctx),
        (Phase::Done(_), _) => (state.phase.clone(), Vec::new()),
    };
    (State { phase, history }, actions)
}

/// `t + d`, saturating: no configured duration can make deadline arithmetic panic.
pub fn later(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);
    t.checked_add(d).or_else(|| t.checked_add(FAR)).unwrap_or(t)
}

fn no_change(phase: Phase) -> (Phase, Vec<Action>) {
    (phase, Vec::new())
}

fn forward(signal: Sig) -> Action {
    Action::Signal {
        signal,
        to: Target::Forwarded,
    }
}

fn stop_signal(ctx: &Ctx) -> Action {
    Action::Signal {
        signal: ctx.stop_signal,
        to: Target::Group,
    }
}

fn starting(
    warm_until: Option<Instant>,
    give_up_at: Option<Instant>,
    event: Event,
    ctx: &Ctx,
) -> (Phase, Vec<Action>) {
    let now = ctx.now;
    let phase = Phase::Starting {
        warm_until,
        give_up_at,
    };
    match event {
        Event::Spawned => {
            let give_up_at = Some(later(now, ctx.ready_timeout));
            match ctx.ready_on {
                ReadyOn::Start => no_change(Phase::Ready),
                ReadyOn::Warmup(warm_up) => no_change(Phase::Starting {
                    warm_until: Some(later(now, warm_up)),
                    give_up_at,
                }),
                ReadyOn::Notify | ReadyOn::Health => no_change(Phase::Starting {
                    warm_until: None,
                    give_up_at,
                }),
            }
        }
        Event::Ready => no_change(Phase::Ready),
        Event::Timer if warm_until.is_some_and(|warm| now >= warm) => no_change(Phase::Ready),
        Event::Timer if give_up_at.is_some_and(|give_up| now >= give_up) => (
            Phase::Starting {
                warm_until,
                give_up_at: None,
            },
            vec![Action::ReadyTimedOut],
        ),
        // Before readiness, the agent is treated as a ready one would be.
        other => match ready(other, ctx) {
            (Phase::Ready, actions) => (phase, actions),
            changed => changed,
        },
    }
}

fn ready(event: Event, ctx: &Ctx) -> (Phase, Vec<Action>) {
    match event {
        Event::StopSignal => begin_drain(DrainReason::Signal, None, true, ctx),
        Event::Drain {
            reason,
            hard_deadline,
            deregister,
        } if deregister || reason.deregisters() => {
            hold_for_load_balancer(reason, hard_deadline, ctx)
        }
        Event::Drain {
            reason,
            hard_deadline,
            ..
        } => begin_drain(reason, hard_deadline, false, ctx),
        Event::Forward(signal) => (Phase::Ready, vec![forward(signal)]),
        // The agent's own exit is `exited_by_itself`, for the restart policy (see `step`).
        _ => no_change(Phase::Ready),
    }
}

fn draining(d: Drain, event: Event, ctx: &Ctx) -> (Phase, Vec<Action>) {
    if !d.told {
        return held(d, event, ctx);
    }
    let now = ctx.now;
    match event {
        // A second stop signal means "now": SIGKILL at once.
        Event::StopSignal if d.signalled => kill_now(d.reason, d.hard_deadline, ctx),
        Event::StopSignal => no_change(Phase::Draining(Drain {
            signalled: true,
            ..d
        })),
        // A later notice can only make a drain shorter (a spot notice during a scale-in drain).
        Event::Drain {
            hard_deadline: Some(new_hard),
            ..
        } => {
            let hard = earliest(d.hard_deadline, new_hard);
            let deadline = d.deadline.min(drain_deadline_for(hard, ctx));
            if deadline <= now {
                stop(d.reason, Some(hard), d.signalled, ctx)
            } else {
                no_change(Phase::Draining(Drain {
                    deadline,
                    hard_deadline: Some(hard),
                    ..d
                }))
            }
        }
        // More time, asked for by the agent: never shorter, never past the hard deadline.
        Event::Extend(by) => {
            let cap = d.hard_deadline.map(|h| drain_deadline_for(h, ctx));
            let wanted = d.deadline.max(later(now, by));
            let until = cap.map_or(wanted, |c| wanted.min(c).max(d.deadline));
            (
                Phase::Draining(Drain {
                    deadline: until,
                    ..d
                }),
                vec![Action::Extended { until }],
            )
        }
        // The instance leaves after all (a scale-in during a maintenance, operator or signal
        // drain): the drain now ends it, so the termination hook is completed; the deadline stays.
        Event::Drain {
            reason,
            hard_deadline: None,
            ..
        } if reason.ends_instance() && !d.reason.ends_instance() => {
            no_change(Phase::Draining(Drain { reason, ..d }))
        }
        Event::Drained => stop(d.reason, d.hard_deadline, d.signalled, ctx),
        Event::DrainCommandFailed if !ctx.listeners && ctx.drain_signal.is_none() => {
            stop(d.reason, d.hard_deadline, d.signalled, ctx)
        }
        Event::Timer if now >= d.deadline => stop(d.reason, d.hard_deadline, d.signalled, ctx),
        Event::Forward(signal) => (Phase::Draining(d), vec![forward(signal)]),
        Event::ChildExited(exit) => {
            let grace = later(now, ctx.stop_timeout);
            agent_gone(exit, d.hard_deadline.map_or(grace, |h| grace.min(h)), ctx)
        }
        _ => no_change(Phase::Draining(d)),
    }
}

/// Draining, the agent not told yet: the load balancer is being stopped. Its end (or the wait's
/// bound) tells the agent; a spot notice shortens the wait; anything else is as in a drain.
fn held(d: Drain, event: Event, ctx: &Ctx) -> (Phase, Vec<Action>) {
    let now = ctx.now;
    match event {
        Event::LoadBalancerDone => begin_drain(d.reason, d.hard_deadline, d.signalled, ctx),
        // Called off while the agent has not heard of it (nor a stop signal come): as if it
        // never began.
        Event::DrainCalledOff(reason) if reason == d.reason && !d.signalled => {
            (Phase::Ready, vec![Action::RegisterAgain { reason }])
        }
        Event::Timer if now >= d.deadline => {
            begin_drain(d.reason, d.hard_deadline, d.signalled, ctx)
        }
        Event::Drain {
            hard_deadline: Some(new_hard),
            ..
        } => {
            let hard = earliest(d.hard_deadline, new_hard);
            let deadline = d.deadline.min(hold_limit(Some(hard), ctx));
            if deadline <= now {
                return begin_drain(d.reason, Some(hard), d.signalled, ctx);
            }
            no_change(Phase::Draining(Drain {
                deadline,
                hard_deadline: Some(hard),
                ..d
            }))
        }
        // The agent has not been told: there is no drain of its own to extend yet.
        Event::Extend(_) | Event::Timer => no_change(Phase::Draining(d)),
        // Anything else is as in a drain, and the agent stays untold.
        event => match draining(Drain { told: true, ..d }, event, ctx) {
            (Phase::Draining(after), actions) => (
                Phase::Draining(Drain {
                    told: false,
                    ..after
                }),
                actions,
            ),
            other => other,
        },
    }
}

fn stopping(s: Stop, event: Event, ctx: &Ctx) -> (Phase, Vec<Action>) {
    let now = ctx.now;
    match event {
        Event::StopSignal if s.signalled && !s.killed => kill_now(s.reason, s.hard_deadline, ctx),
        Event::StopSignal => no_change(Phase::Stopping(Stop {
            signalled: true,
            ..s
        })),
        Event::Drain {
            hard_deadline: Some(new_hard),
            ..
        } if !s.killed => no_change(Phase::Stopping(Stop {
            kill_at: s.kill_at.min(new_hard),
            hard_deadline: Some(earliest(s.hard_deadline, new_hard)),
            ..s
        })),
        Event::Extend(by) if !s.killed => {
            let wanted = s.kill_at.max(later(now, by));
            let until = s
                .hard_deadline
                .map_or(wanted, |h| wanted.min(h).max(s.kill_at));
            (
                Phase::Stopping(Stop {
                    kill_at: until,
                    ..s
                }),
                vec![Action::Extended { until }],
            )
        }
        // As while draining: the instance leaves after all, so the termination hook is completed.
        Event::Drain {
            reason,
            hard_deadline: None,
            ..
        } if reason.ends_instance() && !s.reason.ends_instance() => {
            no_change(Phase::Stopping(Stop { reason, ..s }))
        }
        Event::Timer if !s.killed && now >= s.kill_at => kill_now(s.reason, s.hard_deadline, ctx),
        Event::Forward(signal) => (Phase::Stopping(s), vec![forward(signal)]),
        // The agent is gone: whatever remains of its group keeps the grace it was given, or
        // after SIGKILL is only waited for.
        Event::ChildExited(exit) => {
            let cleanup = if s.killed {
                Cleanup::Killed {
                    give_up_at: later(now, ctx.kill_wait),
                }
            } else {
                Cleanup::Signalled { kill_at: s.kill_at }
            };
            no_change(Phase::Exited { exit, cleanup })
        }
        _ => no_change(Phase::Stopping(s)),
    }
}

/// The agent exited by itself (not during a drain or a stop): started again after a delay when
/// `--restart` says so and no crash loop forbids it; else the run ends, as it always did.
fn exited_by_itself(exit: ChildExit, history: &mut History, ctx: &Ctx) -> (Phase, Vec<Action>) {
    let kill_at = later(ctx.now, ctx.stop_timeout);
    let restart = ctx.restart.policy.applies(&exit);
    match history.decide(restart, ctx.now, &ctx.restart, ctx.jitter) {
        Decision::Exit => agent_gone(exit, kill_at, ctx),
        Decision::CrashLoop { starts, within } => {
            let (phase, mut actions) = agent_gone(exit, kill_at, ctx);
            actions.push(Action::CrashLoop { starts, within });
            (phase, actions)
        }
        // Its group's leftovers get the same stop signal and grace as on the way out.
        Decision::Restart { attempt, delay } => (
            Phase::Restarting(Restart {
                last: exit,
                attempt,
                at: later(ctx.now, delay),
                cleanup: Some(Cleanup::Signalled { kill_at }),
            }),
            vec![stop_signal(ctx)],
        ),
    }
}

/// Between an agent's exit and its next start: the rest of its group is cleared first (stop
/// signal, SIGKILL past the grace), then the delay runs out and the agent is spawned. A stop or a
/// drain ends the run at once, with the last agent's status.
fn restarting(r: &Restart, event: Event, history: &mut History, ctx: &Ctx) -> (Phase, Vec<Action>) {
    let now = ctx.now;
    let with_cleanup = |cleanup| {
        Phase::Restarting(Restart {
            cleanup,
            ..r.clone()
        })
    };
    match (event, &r.cleanup) {
        (Event::StopSignal, _) => end_restarts(r, DrainReason::Signal, Event::StopSignal, ctx),
        (event @ Event::Drain { reason, .. }, _) => end_restarts(r, reason, event, ctx),
        (Event::GroupGone, Some(_)) => no_change(with_cleanup(None)),
        (Event::Timer, Some(Cleanup::Signalled { kill_at })) if now >= *kill_at => (
            with_cleanup(Some(Cleanup::Killed {
                give_up_at: later(now, ctx.kill_wait),
            })),
            vec![Action::Kill],
        ),
        // Past SIGKILL, only a process stuck in the kernel remains; waiting cannot help it.
        (Event::Timer, Some(Cleanup::Killed { give_up_at })) if now >= *give_up_at => {
            no_change(with_cleanup(None))
        }
        (Event::Timer, None) if now >= r.at => (Phase::Restarting(r.clone()), vec![Action::Spawn]),
        // A new agent runs: the last one's proof of exit is dropped with this phase.
        (Event::Spawned, _) => starting(None, None, Event::Spawned, ctx),
        (Event::SpawnFailed, _) => {
            history.started(now, &ctx.restart);
            match history.decide(true, now, &ctx.restart, ctx.jitter) {
                Decision::Restart { attempt, delay } => no_change(Phase::Restarting(Restart {
                    attempt,
                    at: later(now, delay),
                    ..r.clone()
                })),
                Decision::CrashLoop { starts, within } => (
                    Phase::Done(r.last.clone()),
                    vec![Action::CrashLoop { starts, within }],
                ),
                Decision::Exit => no_change(Phase::Done(r.last.clone())),
            }
        }
        _ => no_change(Phase::Restarting(r.clone())),
    }
}

/// A stop or a drain during a restart: no agent starts again, and the run ends with the last
/// one's status once its group is gone (leftovers are killed at once after a stop signal, and
/// keep their grace after a drain).
fn end_restarts(r: &Restart, reason: DrainReason, event: Event, ctx: &Ctx) -> (Phase, Vec<Action>) {
    let (phase, more) = match &r.cleanup {
        None => no_change(Phase::Done(r.last.clone())),
        Some(cleanup) => exited(&r.last, cleanup, event, ctx),
    };
    let mut actions = vec![Action::RestartCancelled { reason }];
    actions.extend(more);
    (phase, actions)
}

/// The agent exited by itself: whatever remains of its group gets the stop signal, then
/// SIGKILL at `kill_at`.
fn agent_gone(exit: ChildExit, kill_at: Instant, ctx: &Ctx) -> (Phase, Vec<Action>) {
    (
        Phase::Exited {
            exit,
            cleanup: Cleanup::Signalled { kill_at },
        },
        vec![stop_signal(ctx)],
    )
}

fn exited(exit: &ChildExit, cleanup: &Cleanup, event: Event, ctx: &Ctx) -> (Phase, Vec<Action>) {
    let now = ctx.now;
    let unchanged = || {
        no_change(Phase::Exited {
            exit: exit.clone(),
            cleanup: cleanup.clone(),
        })
    };
    match (cleanup, event) {
        (_, Event::GroupGone) => no_change(Phase::Done(exit.clone())),
        // Leftovers past their grace, or a stop signal while they linger: SIGKILL them.
        (Cleanup::Signalled { kill_at }, event)
            if event == Event::StopSignal || (event == Event::Timer && now >= *kill_at) =>
        {
            (
                Phase::Exited {
                    exit: exit.clone(),
                    cleanup: Cleanup::Killed {
                        give_up_at: later(now, ctx.kill_wait),
                    },
                },
                vec![Action::Kill],
            )
        }
        (Cleanup::Killed { give_up_at }, Event::Timer) if now >= *give_up_at => {
            no_change(Phase::Done(exit.clone()))
        }
        _ => unchanged(),
    }
}

/// A drain while the leftovers of an agent that exited by itself are cleared: kept for the
/// outcome, never dropped (the instance may be leaving, and its hook must still be completed).
/// A hard deadline (spot) brings their SIGKILL forward to it.
fn drain_after_exit(
    exit: &ChildExit,
    cleanup: &Cleanup,
    reason: DrainReason,
    hard_deadline: Option<Instant>,
) -> (Phase, Vec<Action>) {
    let cleanup = match (cleanup, hard_deadline) {
        (Cleanup::Signalled { kill_at }, Some(hard)) => Cleanup::Signalled {
            kill_at: (*kill_at).min(hard),
        },
        (cleanup, _) => cleanup.clone(),
    };
    (
        Phase::Exited {
            exit: exit.clone(),
            cleanup,
        },
        vec![Action::DrainAfterExit { reason }],
    )
}

/// Starts a drain: tell the agent and wait for it, or go straight to the stop signal when it
/// has no way to hear of the drain (waiting would only delay the stop).
fn begin_drain(
    reason: DrainReason,
    hard_deadline: Option<Instant>,
    signalled: bool,
    ctx: &Ctx,
) -> (Phase, Vec<Action>) {
    let skip = |why| {
        let (phase, mut actions) = stop(reason, hard_deadline, signalled, ctx);
        actions.insert(0, Action::DrainSkipped { reason, why });
        (phase, actions)
    };
    if !ctx.agent_can_hear_drain() {
        return skip(DrainSkipped::NoWayToTell);
    }
    let drain_end = later(ctx.now, ctx.drain_timeout);
    let deadline = match hard_deadline {
        Some(hard) => drain_end.min(drain_deadline_for(hard, ctx)),
        None => drain_end,
    };
    if deadline <= ctx.now {
        let left = hard_deadline.map_or(Duration::ZERO, |h| h.saturating_duration_since(ctx.now));
        return skip(DrainSkipped::NoTimeLeft { left });
    }
    let mut actions = vec![Action::AnnounceDrain { reason, deadline }];
    actions.extend(ctx.drain_signal.map(forward));
    if ctx.drain_command {
        actions.push(Action::RunDrainCommand { reason, deadline });
    }
    (
        Phase::Draining(Drain {
            reason,
            deadline,
            told: true,
            hard_deadline,
            signalled,
        }),
        actions,
    )
}

/// A drain that ends the instance where the group does not deregister it: readiness turns 503
/// and the load balancer is stopped first; the agent is told once it is done
/// ([`Event::LoadBalancerDone`]) or the wait's bound passes. The bound keeps the agent's whole
/// drain and stop budget before a hard deadline; when nothing is left for the wait, the
/// deregistration is still asked for and the agent is told at once.
fn hold_for_load_balancer(
    reason: DrainReason,
    hard_deadline: Option<Instant>,
    ctx: &Ctx,
) -> (Phase, Vec<Action>) {
    let Some(wait) = ctx.load_balancer else {
        return begin_drain(reason, hard_deadline, false, ctx);
    };
    let until = later(ctx.now, wait).min(hold_limit(hard_deadline, ctx));
    let hold = Action::HoldForLoadBalancer { reason, until };
    if until <= ctx.now {
        let (phase, mut actions) = begin_drain(reason, hard_deadline, false, ctx);
        actions.insert(0, hold);
        return (phase, actions);
    }
    (
        Phase::Draining(Drain {
            reason,
            deadline: until,
            told: false,
            hard_deadline,
            signalled: false,
        }),
        vec![hold],
    )
}

/// The latest the load balancer may be waited for: early enough that the agent still gets its
/// full `--drain-timeout` and stop grace before the hard deadline (never before now).
fn hold_limit(hard_deadline: Option<Instant>, ctx: &Ctx) -> Instant {
    match hard_deadline {
        Some(hard) => drain_deadline_for(hard, ctx)
            .checked_sub(ctx.drain_timeout)
            .unwrap_or(ctx.now)
            .max(ctx.now),
        None => later(ctx.now, Duration::MAX),
    }
}

/// The drain must end early enough that the full stop grace still fits before the hard deadline.
fn drain_deadline_for(hard: Instant, ctx: &Ctx) -> Instant {
    hard.checked_sub(ctx.stop_timeout)
        .unwrap_or(ctx.now)
        .max(ctx.now)
}

fn stop(
    reason: DrainReason,
    hard_deadline: Option<Instant>,
    signalled: bool,
    ctx: &Ctx,
) -> (Phase, Vec<Action>) {
    let grace = later(ctx.now, ctx.stop_timeout);
    (
        Phase::Stopping(Stop {
            reason,
            kill_at: hard_deadline.map_or(grace, |hard| grace.min(hard)),
            hard_deadline,
            killed: false,
            signalled,
        }),
        vec![stop_signal(ctx)],
    )
}

fn kill_now(
    reason: DrainReason,
    hard_deadline: Option<Instant>,
    ctx: &Ctx,
) -> (Phase, Vec<Action>) {
    (
        Phase::Stopping(Stop {
            reason,
            kill_at: ctx.now,
            hard_deadline,
            killed: true,
            signalled: true,
        }),
        vec![Action::Kill],
    )
}

fn earliest(current: Option<Instant>, new: Instant) -> Instant {
    current.map_or(new, |c| c.min(new))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::settings::CrashLoop;
    use crate::machine::restart::RestartPolicy;
    use crate::process::exit::ChildExit;

    const S: Duration = Duration::from_secs(1);

    /// The context most transitions are judged in; `machine::said`'s tests use it too.
    pub(crate) fn ctx(now: Instant) -> Ctx {
        Ctx {
            load_balancer: None,
            now,
            stop_signal: Sig::TERM,
            stop_timeout: 30 * S,
            drain_timeout: 60 * S,
            drain_signal: None,
            listeners: false,
            kill_wait: 5 * S,
            ready_on: ReadyOn::Start,
            ready_timeout: 600 * S,
            drain_command: false,
            restart: RestartSettings::default(),
            jitter: 0.0,
        }
    }

    fn with_drain_signal(now: Instant) -> Ctx {
        Ctx {
            drain_signal: Some(Sig::USR1),
            ..ctx(now)
        }
    }

    /// `--restart POLICY` with a 1 s first delay, an 8 s maximum and a 3/60s crash loop.
    fn restarting(policy: RestartPolicy, now: Instant) -> Ctx {
        Ctx {
            restart: RestartSettings {
                policy,
                delay: S,
                max_delay: 8 * S,
                crash_loop: CrashLoop {
                    starts: 3,
                    within: 60 * S,
                },
            },
            ..ctx(now)
        }
    }

    fn run(phase: Phase, event: Event, ctx: &Ctx) -> (Phase, Vec<Action>) {
        let state = State {
            phase,
            ..State::new()
        };
        let (state, actions) = step(&state, event, ctx);
        (state.phase, actions)
    }

    fn stop_signal() -> Action {
        Action::Signal {
            signal: Sig::TERM,
            to: Target::Group,
        }
    }

    /// name, phase before, event, context, phase after, actions.
    type Case = (&'static str, Phase, Event, Ctx, Phase, Vec<Action>);

    #[test]
    fn transitions_table() {
        let t0 = Instant::now();
        let c = ctx(t0);
        let d = with_drain_signal(t0);
        let exit = ChildExit::for_test(0);
        let draining = Phase::Draining(Drain {
            told: true,
            reason: DrainReason::ScaleIn,
            deadline: t0 + 60 * S,
            hard_deadline: None,
            signalled: false,
        });
        let stopping = Phase::Stopping(Stop {
            reason: DrainReason::Signal,
            kill_at: t0 + 30 * S,
            hard_deadline: None,
            killed: false,
            signalled: true,
        });
        let cases: Vec<Case> = vec![
            (
                "ready",
                Phase::Starting {
                    warm_until: None,
                    give_up_at: None,
                },
                Event::Ready,
                c.clone(),
                Phase::Ready,
                vec![],
            ),
            (
                "ready twice is a no-op",
                Phase::Ready,
                Event::Ready,
                c.clone(),
                Phase::Ready,
                vec![],
            ),
            (
                "SIGTERM with nobody listening stops at once, and says why",
                Phase::Ready,
                Event::StopSignal,
                c.clone(),
                stopping.clone(),
                vec![
                    Action::DrainSkipped {
                        reason: DrainReason::Signal,
                        why: DrainSkipped::NoWayToTell,
                    },
                    stop_signal(),
                ],
            ),
            (
                "SIGTERM with a drain signal drains first",
                Phase::Ready,
                Event::StopSignal,
                d.clone(),
                Phase::Draining(Drain {
                    told: true,
                    reason: DrainReason::Signal,
                    deadline: t0 + 60 * S,
                    hard_deadline: None,
                    signalled: true,
                }),
                vec![
                    Action::AnnounceDrain {
                        reason: DrainReason::Signal,
                        deadline: t0 + 60 * S,
                    },
                    Action::Signal {
                        signal: Sig::USR1,
                        to: Target::Forwarded,
                    },
                ],
            ),
            (
                "a notice with a drain signal drains",
                Phase::Ready,
                Event::Drain {
                    deregister: false,
                    reason: DrainReason::ScaleIn,
                    hard_deadline: None,
                },
                d.clone(),
                draining.clone(),
                vec![
                    Action::AnnounceDrain {
                        reason: DrainReason::ScaleIn,
                        deadline: t0 + 60 * S,
                    },
                    Action::Signal {
                        signal: Sig::USR1,
                        to: Target::Forwarded,
                    },
                ],
            ),
            (
                "drained ends the drain",
                draining.clone(),
                Event::Drained,
                c.clone(),
                Phase::Stopping(Stop {
                    reason: DrainReason::ScaleIn,
                    kill_at: t0 + 30 * S,
                    hard_deadline: None,
                    killed: false,
                    signalled: false,
                }),
                vec![stop_signal()],
            ),
            (
                "a timer before the deadline is ignored",
                draining.clone(),
                Event::Timer,
                c.clone(),
                draining.clone(),
                vec![],
            ),
            (
                "the drain deadline sends the stop signal",
                draining.clone(),
                Event::Timer,
                ctx(t0 + 60 * S),
                Phase::Stopping(Stop {
                    reason: DrainReason::ScaleIn,
                    kill_at: t0 + 90 * S,
                    hard_deadline: None,
                    killed: false,
                    signalled: false,
                }),
                vec![stop_signal()],
            ),
            (
                "a first SIGTERM during a notice drain is noted",
                draining.clone(),
                Event::StopSignal,
                c.clone(),
                Phase::Draining(Drain {
                    told: true,
                    reason: DrainReason::ScaleIn,
                    deadline: t0 + 60 * S,
                    hard_deadline: None,
                    signalled: true,
                }),
                vec![],
            ),
            (
                "a second SIGTERM kills at once",
                stopping.clone(),
                Event::StopSignal,
                c.clone(),
                Phase::Stopping(Stop {
                    reason: DrainReason::Signal,
                    kill_at: t0,
                    hard_deadline: None,
                    killed: true,
                    signalled: true,
                }),
                vec![Action::Kill],
            ),
            (
                "the grace period ends in SIGKILL",
                stopping.clone(),
                Event::Timer,
                ctx(t0 + 30 * S),
                Phase::Stopping(Stop {
                    reason: DrainReason::Signal,
                    kill_at: t0 + 30 * S,
                    hard_deadline: None,
                    killed: true,
                    signalled: true,
                }),
                vec![Action::Kill],
            ),
            (
                "signals are forwarded while the agent runs",
                Phase::Ready,
                Event::Forward(Sig::HUP),
                c.clone(),
                Phase::Ready,
                vec![Action::Signal {
                    signal: Sig::HUP,
                    to: Target::Forwarded,
                }],
            ),
            (
                "an agent exiting by itself: its group gets the stop signal",
                Phase::Ready,
                Event::ChildExited(exit.clone()),
                c.clone(),
                Phase::Exited {
                    exit: exit.clone(),
                    cleanup: Cleanup::Signalled {
                        kill_at: t0 + 30 * S,
                    },
                },
                vec![stop_signal()],
            ),
            (
                "an agent exiting while stopping keeps the grace it had",
                stopping.clone(),
                Event::ChildExited(exit.clone()),
                ctx(t0 + 10 * S),
                Phase::Exited {
                    exit: exit.clone(),
                    cleanup: Cleanup::Signalled {
                        kill_at: t0 + 30 * S,
                    },
                },
                vec![],
            ),
            (
                "leftovers past the grace are killed",
                Phase::Exited {
                    exit: exit.clone(),
                    cleanup: Cleanup::Signalled { kill_at: t0 },
                },
                Event::Timer,
                c.clone(),
                Phase::Exited {
                    exit: exit.clone(),
                    cleanup: Cleanup::Killed {
                        give_up_at: t0 + 5 * S,
                    },
                },
                vec![Action::Kill],
            ),
            (
                "a scale-in while the leftovers of a self-exited agent are cleared is kept",
                Phase::Exited {
                    exit: exit.clone(),
                    cleanup: Cleanup::Signalled {
                        kill_at: t0 + 30 * S,
                    },
                },
                Event::Drain {
                    deregister: false,
                    reason: DrainReason::ScaleIn,
                    hard_deadline: None,
                },
                c.clone(),
                Phase::Exited {
                    exit: exit.clone(),
                    cleanup: Cleanup::Signalled {
                        kill_at: t0 + 30 * S,
                    },
                },
                vec![Action::DrainAfterExit {
                    reason: DrainReason::ScaleIn,
                }],
            ),
            (
                "a spot notice then brings the leftovers' SIGKILL forward to its deadline",
                Phase::Exited {
                    exit: exit.clone(),
                    cleanup: Cleanup::Signalled {
                        kill_at: t0 + 30 * S,
                    },
                },
                Event::Drain {
                    deregister: false,
                    reason: DrainReason::SpotInterruption,
                    hard_deadline: Some(t0 + 7 * S),
                },
                c.clone(),
                Phase::Exited {
                    exit: exit.clone(),
                    cleanup: Cleanup::Signalled {
                        kill_at: t0 + 7 * S,
                    },
                },
                vec![Action::DrainAfterExit {
                    reason: DrainReason::SpotInterruption,
                }],
            ),
            (
                "an empty group ends the run",
                Phase::Exited {
                    exit: exit.clone(),
                    cleanup: Cleanup::Signalled { kill_at: t0 },
                },
                Event::GroupGone,
                c.clone(),
                Phase::Done(exit.clone()),
                vec![],
            ),
            (
                "nothing forwards to a finished agent",
                Phase::Done(exit.clone()),
                Event::Forward(Sig::HUP),
                c.clone(),
                Phase::Done(exit.clone()),
                vec![],
            ),
            (
                "drained outside a drain is a no-op",
                Phase::Ready,
                Event::Drained,
                c.clone(),
                Phase::Ready,
                vec![],
            ),
        ];
        for (name, phase, event, ctx, want_phase, want_actions) in cases {
            let (got_phase, got_actions) = run(phase, event, &ctx);
            assert_eq!(got_phase, want_phase, "{name}: phase");
            assert_eq!(got_actions, want_actions, "{name}: actions");
        }
    }

    #[test]
    fn a_hard_deadline_squeezes_drain_and_grace() {
        let t0 = Instant::now();
        let d = with_drain_signal(t0);
        // A spot notice 40 s away with a 30 s stop grace leaves a 10 s drain.
        let (phase, _) = run(
            Phase::Ready,
            Event::Drain {
                deregister: false,
                reason: DrainReason::SpotInterruption,
                hard_deadline: Some(t0 + 40 * S),
            },
            &d,
        );
        assert_eq!(phase.deadline(), Some(t0 + 10 * S));
        // At the drain deadline the stop grace ends exactly at the hard deadline.
        let (phase, _) = run(phase, Event::Timer, &with_drain_signal(t0 + 10 * S));
        assert_eq!(phase.deadline(), Some(t0 + 40 * S));

        // A notice closer than the grace: straight to the stop signal, SIGKILL at the notice.
        let (phase, actions) = run(
            Phase::Ready,
            Event::Drain {
                deregister: false,
                reason: DrainReason::SpotInterruption,
                hard_deadline: Some(t0 + 4 * S),
            },
            &d,
        );
        assert!(matches!(phase, Phase::Stopping(Stop { .. })), "{phase:?}");
        assert_eq!(phase.deadline(), Some(t0 + 4 * S));
        let skipped = Action::DrainSkipped {
            reason: DrainReason::SpotInterruption,
            why: DrainSkipped::NoTimeLeft { left: 4 * S },
        };
        assert_eq!(actions, vec![skipped, stop_signal()], "the skip is said");
    }

    #[test]
    fn an_on_drain_command_that_cannot_start_stops_an_agent_nothing_else_told() {
        let t0 = Instant::now();
        let told_only_by_the_command = Ctx {
            drain_command: true,
            ..ctx(t0)
        };
        let (draining, _) = run(
            Phase::Ready,
            Event::Drain {
                deregister: false,
                reason: DrainReason::ScaleIn,
                hard_deadline: None,
            },
            &told_only_by_the_command,
        );
        assert!(matches!(draining, Phase::Draining(_)), "{draining:?}");
        let (phase, actions) = run(
            draining.clone(),
            Event::DrainCommandFailed,
            &told_only_by_the_command,
        );
        assert!(matches!(phase, Phase::Stopping(_)), "{phase:?}");
        assert_eq!(actions, vec![stop_signal()]);
        // Told another way too (a drain signal): the drain goes on.
        let also_signalled = Ctx {
            drain_command: true,
            ..with_drain_signal(t0)
        };
        let (phase, actions) = run(draining.clone(), Event::DrainCommandFailed, &also_signalled);
        assert_eq!(phase, draining);
        assert!(actions.is_empty());
    }

    #[test]
    fn a_scale_in_during_a_drain_that_keeps_the_instance_makes_it_one_that_ends_it() {
        let now = Instant::now();
        let c = ctx(now);
        let scale_in = Event::Drain {
            deregister: false,
            reason: DrainReason::ScaleIn,
            hard_deadline: None,
        };
        let draining = |reason| {
            Phase::Draining(Drain {
                told: true,
                reason,
                deadline: now + 60 * S,
                hard_deadline: None,
                signalled: false,
            })
        };
        let stopping = |reason| {
            Phase::Stopping(Stop {
                reason,
                kill_at: now + 30 * S,
                hard_deadline: None,
                killed: false,
                signalled: false,
            })
        };
        // (before, event, after): the reason changes, nothing else does, and no action follows.
        let cases = [
            (
                draining(DrainReason::Maintenance),
                scale_in.clone(),
                draining(DrainReason::ScaleIn),
            ),
            (
                draining(DrainReason::Operator),
                scale_in.clone(),
                draining(DrainReason::ScaleIn),
            ),
            (
                stopping(DrainReason::Maintenance),
                scale_in.clone(),
                stopping(DrainReason::ScaleIn),
            ),
            (
                draining(DrainReason::ScaleIn),
                Event::Drain {
                    deregister: false,
                    reason: DrainReason::Maintenance,
                    hard_deadline: None,
                },
                draining(DrainReason::ScaleIn),
            ),
            (
                draining(DrainReason::WarmPool),
                scale_in.clone(),
                draining(DrainReason::WarmPool),
            ),
        ];
        for (before, event, after) in cases {
            let (phase, actions) = run(before.clone(), event, &c);
            assert_eq!(phase, after, "from {before:?}");
            assert!(actions.is_empty(), "{actions:?}");
        }
        assert!(!DrainReason::Maintenance.ends_instance());
        assert_eq!(DrainReason::Maintenance.as_str(), "maintenance");
    }

    #[test]
    fn a_spot_notice_during_a_drain_shortens_it() {
        let t0 = Instant::now();
        let d = with_drain_signal(t0);
        let (phase, _) = run(
            Phase::Ready,
            Event::Drain {
                deregister: false,
                reason: DrainReason::ScaleIn,
                hard_deadline: None,
            },
            &d,
        );
        assert_eq!(phase.deadline(), Some(t0 + 60 * S));
        let (phase, actions) = run(
            phase,
            Event::Drain {
                deregister: false,
                reason: DrainReason::SpotInterruption,
                hard_deadline: Some(t0 + 45 * S),
            },
            &d,
        );
        assert_eq!(phase.deadline(), Some(t0 + 15 * S));
        assert!(actions.is_empty());
        // A later, looser notice never lengthens it.
        let (phase, _) = run(
            phase,
            Event::Drain {
                deregister: false,
                reason: DrainReason::SpotInterruption,
                hard_deadline: Some(t0 + 500 * S),
            },
            &d,
        );
        assert_eq!(phase.deadline(), Some(t0 + 15 * S));
    }

    #[test]
    fn extensions_never_shorten_and_never_pass_the_hard_deadline() {
        let t0 = Instant::now();
        let d = with_drain_signal(t0);
        let (draining, _) = run(
            Phase::Ready,
            Event::Drain {
                deregister: false,
                reason: DrainReason::ScaleIn,
                hard_deadline: None,
            },
            &d,
        );
        let (phase, actions) = run(draining.clone(), Event::Extend(120 * S), &d);
        assert_eq!(phase.deadline(), Some(t0 + 120 * S));
        assert_eq!(
            actions,
            vec![Action::Extended {
                until: t0 + 120 * S
            }]
        );
        let (phase, _) = run(draining, Event::Extend(S), &d);
        assert_eq!(
            phase.deadline(),
            Some(t0 + 60 * S),
            "a short extension never shortens"
        );

        // Spot: SIGKILL at t0+100 s, grace 30 s: the drain may last until t0+70 s, no longer.
        let (spot, _) = run(
            Phase::Ready,
            Event::Drain {
                deregister: false,
                reason: DrainReason::SpotInterruption,
                hard_deadline: Some(t0 + 100 * S),
            },
            &d,
        );
        assert_eq!(spot.deadline(), Some(t0 + 60 * S));
        let (phase, _) = run(spot, Event::Extend(3600 * S), &d);
        assert_eq!(phase.deadline(), Some(t0 + 70 * S));
        let (stopping, _) = run(phase, Event::Timer, &with_drain_signal(t0 + 70 * S));
        assert_eq!(stopping.deadline(), Some(t0 + 100 * S));
        let (phase, _) = run(
            stopping,
            Event::Extend(3600 * S),
            &with_drain_signal(t0 + 80 * S),
        );
        assert_eq!(
            phase.deadline(),
            Some(t0 + 100 * S),
            "the grace never passes the notice"
        );
    }

    #[test]
    fn readiness_by_warm_up_and_the_ready_timeout() {
        let t0 = Instant::now();
        let warm = Ctx {
            ready_on: ReadyOn::Warmup(10 * S),
            ..ctx(t0)
        };
        let (phase, _) = run(State::new().phase, Event::Spawned, &warm);
        assert_eq!(phase.deadline(), Some(t0 + 10 * S));
        let (phase, _) = run(
            phase,
            Event::Timer,
            &Ctx {
                now: t0 + 10 * S,
                ..warm.clone()
            },
        );
        assert_eq!(phase, Phase::Ready);

        let notify = Ctx {
            ready_on: ReadyOn::Notify,
            ..ctx(t0)
        };
        let (phase, _) = run(State::new().phase, Event::Spawned, &notify);
        assert_eq!(phase.deadline(), Some(t0 + 600 * S));
        let (phase, actions) = run(
            phase,
            Event::Timer,
            &Ctx {
                now: t0 + 600 * S,
                ..notify.clone()
            },
        );
        assert_eq!(actions, vec![Action::ReadyTimedOut]);
        assert_eq!(
            phase.name(),
            PhaseName::Starting,
            "the agent keeps running, not ready"
        );
        assert_eq!(phase.deadline(), None);
        let (phase, _) = run(phase, Event::Ready, &notify);
        assert_eq!(phase, Phase::Ready, "a late READY=1 still counts");
    }

    #[test]
    fn after_sigkill_the_guard_waits_for_the_exit_without_a_timer() {
        let t0 = Instant::now();
        let killed = Phase::Stopping(Stop {
            reason: DrainReason::Signal,
            kill_at: t0,
            hard_deadline: None,
            killed: true,
            signalled: true,
        });
        // The terminate hook must never be completed while the agent runs, so no timer may
        // end this phase: only the agent's exit does.
        assert_eq!(killed.deadline(), None);
        let (phase, actions) = run(killed.clone(), Event::Timer, &ctx(t0 + 1000 * S));
        assert_eq!(phase, killed);
        assert!(actions.is_empty());
    }

    #[test]
    fn every_phase_takes_every_event_without_panicking() {
        let t0 = Instant::now();
        let exit = ChildExit::for_test(3);
        let phases = [
            Phase::Starting {
                warm_until: None,
                give_up_at: None,
            },
            Phase::Ready,
            Phase::Draining(Drain {
                told: true,
                reason: DrainReason::Operator,
                deadline: t0,
                hard_deadline: Some(t0),
                signalled: false,
            }),
            Phase::Stopping(Stop {
                reason: DrainReason::Operator,
                kill_at: t0,
                hard_deadline: None,
                killed: true,
                signalled: false,
            }),
            Phase::Exited {
                exit: exit.clone(),
                cleanup: Cleanup::Killed { give_up_at: t0 },
            },
            Phase::Done(exit.clone()),
            Phase::Restarting(Restart {
                last: exit.clone(),
                attempt: 1,
                at: t0,
                cleanup: None,
            }),
            Phase::Restarting(Restart {
                last: exit.clone(),
                attempt: 2,
                at: t0,
                cleanup: Some(Cleanup::Signalled { kill_at: t0 }),
            }),
        ];
        let events = [
            Event::Spawned,
            Event::SpawnFailed,
            Event::Ready,
            Event::StopSignal,
            Event::Drain {
                deregister: false,
                reason: DrainReason::Rebalance,
                hard_deadline: None,
            },
            Event::Drained,
            Event::Forward(Sig::USR2),
            Event::Timer,
            Event::ChildExited(exit.clone()),
            Event::GroupGone,
        ];
        for phase in &phases {
            for event in &events {
                for c in [
                    ctx(t0),
                    with_drain_signal(t0 + 100 * S),
                    restarting(RestartPolicy::Always, t0),
                ] {
                    let (next, _) = run(phase.clone(), event.clone(), &c);
                    // Once the run is ending no agent ever runs again.
                    if phase.ended() {
                        assert!(next.ended(), "{phase:?} + {event:?} -> {next:?}");
                    }
                    // A reaped agent is followed by a new one only once it was spawned.
                    if !phase.agent_running() && next.agent_running() {
                        assert_eq!(*event, Event::Spawned, "{phase:?} -> {next:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn restart_transitions_table() {
        let t0 = Instant::now();
        let c = restarting(RestartPolicy::OnFailure, t0);
        let failed = ChildExit::for_test(3);
        let waiting = |cleanup| {
            Phase::Restarting(Restart {
                last: failed.clone(),
                attempt: 1,
                at: t0 + S,
                cleanup,
            })
        };
        let signalled = || {
            Some(Cleanup::Signalled {
                kill_at: t0 + 30 * S,
            })
        };
        let cases: Vec<Case> = vec![
            (
                "a failure with --restart on-failure: leftovers first, then the delay",
                Phase::Ready,
                Event::ChildExited(failed.clone()),
                c.clone(),
                waiting(signalled()),
                vec![stop_signal()],
            ),
            (
                "a failure before readiness restarts too",
                Phase::Starting {
                    warm_until: None,
                    give_up_at: Some(t0 + 600 * S),
                },
                Event::ChildExited(failed.clone()),
                c.clone(),
                waiting(signalled()),
                vec![stop_signal()],
            ),
            (
                "exit 0 with --restart on-failure ends the run",
                Phase::Ready,
                Event::ChildExited(ChildExit::for_test(0)),
                c.clone(),
                Phase::Exited {
                    exit: ChildExit::for_test(0),
                    cleanup: Cleanup::Signalled {
                        kill_at: t0 + 30 * S,
                    },
                },
                vec![stop_signal()],
            ),
            (
                "exit 0 with --restart always restarts",
                Phase::Ready,
                Event::ChildExited(ChildExit::for_test(0)),
                restarting(RestartPolicy::Always, t0),
                Phase::Restarting(Restart {
                    last: ChildExit::for_test(0),
                    attempt: 1,
                    at: t0 + S,
                    cleanup: signalled(),
                }),
                vec![stop_signal()],
            ),
            (
                "no restart during a drain",
                Phase::Draining(Drain {
                    told: true,
                    reason: DrainReason::Operator,
                    deadline: t0 + 60 * S,
                    hard_deadline: None,
                    signalled: false,
                }),
                Event::ChildExited(failed.clone()),
                restarting(RestartPolicy::Always, t0),
                Phase::Exited {
                    exit: failed.clone(),
                    cleanup: Cleanup::Signalled {
                        kill_at: t0 + 30 * S,
                    },
                },
                vec![stop_signal()],
            ),
            (
                "an empty group leaves only the delay",
                waiting(signalled()),
                Event::GroupGone,
                c.clone(),
                waiting(None),
                vec![],
            ),
            (
                "leftovers past their grace are killed",
                waiting(signalled()),
                Event::Timer,
                restarting(RestartPolicy::OnFailure, t0 + 30 * S),
                waiting(Some(Cleanup::Killed {
                    give_up_at: t0 + 35 * S,
                })),
                vec![Action::Kill],
            ),
            (
                "the delay is not over",
                waiting(None),
                Event::Timer,
                c.clone(),
                waiting(None),
                vec![],
            ),
            (
                "the delay is over: spawn",
                waiting(None),
                Event::Timer,
                restarting(RestartPolicy::OnFailure, t0 + S),
                waiting(None),
                vec![Action::Spawn],
            ),
            (
                "spawned: starting again, the last exit left behind",
                waiting(None),
                Event::Spawned,
                Ctx {
                    ready_on: ReadyOn::Notify,
                    ..c.clone()
                },
                Phase::Starting {
                    warm_until: None,
                    give_up_at: Some(t0 + 600 * S),
                },
                vec![],
            ),
            (
                "a spawn that failed counts as a failed start",
                waiting(None),
                Event::SpawnFailed,
                c.clone(),
                Phase::Restarting(Restart {
                    last: failed.clone(),
                    attempt: 1,
                    at: t0 + S,
                    cleanup: None,
                }),
                vec![],
            ),
            (
                "SIGTERM during the delay ends the run at once with the last status",
                waiting(None),
                Event::StopSignal,
                c.clone(),
                Phase::Done(failed.clone()),
                vec![Action::RestartCancelled {
                    reason: DrainReason::Signal,
                }],
            ),
            (
                "SIGTERM while leftovers remain kills them at once",
                waiting(signalled()),
                Event::StopSignal,
                c.clone(),
                Phase::Exited {
                    exit: failed.clone(),
                    cleanup: Cleanup::Killed {
                        give_up_at: t0 + 5 * S,
                    },
                },
                vec![
                    Action::RestartCancelled {
                        reason: DrainReason::Signal,
                    },
                    Action::Kill,
                ],
            ),
            (
                "a scale-in during the delay ends the run, leftovers keep their grace",
                waiting(signalled()),
                Event::Drain {
                    deregister: false,
                    reason: DrainReason::ScaleIn,
                    hard_deadline: None,
                },
                c.clone(),
                Phase::Exited {
                    exit: failed.clone(),
                    cleanup: Cleanup::Signalled {
                        kill_at: t0 + 30 * S,
                    },
                },
                vec![Action::RestartCancelled {
                    reason: DrainReason::ScaleIn,
                }],
            ),
            (
                "nothing is forwarded while no agent runs",
                waiting(None),
                Event::Forward(Sig::HUP),
                c.clone(),
                waiting(None),
                vec![],
            ),
        ];
        for (name, phase, event, ctx, want_phase, want_actions) in cases {
            let (got_phase, got_actions) = run(phase, event, &ctx);
            assert_eq!(got_phase, want_phase, "{name}: phase");
            assert_eq!(got_actions, want_actions, "{name}: actions");
        }
        assert_eq!(waiting(None).name(), PhaseName::Starting);
        assert!(!waiting(None).agent_running() && !waiting(None).ended());
    }

    #[test]
    fn restarts_double_and_a_crash_loop_ends_them() {
        let t0 = Instant::now();
        let mut state = State::new();
        let mut feed = |event: Event, at: Instant| {
            let (next, actions) = step(&state, event, &restarting(RestartPolicy::Always, at));
            state = next;
            (state.phase.clone(), actions)
        };
        let mut t = t0;
        feed(Event::Spawned, t);
        for (attempt, delay) in [(1, S), (2, 2 * S)] {
            let (phase, _) = feed(Event::ChildExited(ChildExit::for_test(1)), t);
            let Phase::Restarting(r) = phase else {
                panic!("restarting: {phase:?}")
            };
            assert_eq!((r.attempt, r.at), (attempt, t + delay));
            feed(Event::GroupGone, t);
            t += delay;
            let (_, actions) = feed(Event::Timer, t);
            assert_eq!(actions, vec![Action::Spawn]);
            let (phase, _) = feed(Event::Spawned, t);
            assert_eq!(phase, Phase::Ready);
        }
        // The third start within 60 s: no fourth.
        let (phase, actions) = feed(Event::ChildExited(ChildExit::for_test(7)), t);
        assert!(phase.ended(), "{phase:?}");
        assert_eq!(
            actions,
            vec![
                stop_signal(),
                Action::CrashLoop {
                    starts: 3,
                    within: 60 * S
                }
            ]
        );
    }

    #[test]
    fn an_on_drain_command_counts_as_telling_the_agent() {
        let t0 = Instant::now();
        let c = Ctx {
            drain_command: true,
            ..ctx(t0)
        };
        let (phase, actions) = run(Phase::Ready, Event::StopSignal, &c);
        assert_eq!(phase.deadline(), Some(t0 + 60 * S), "waits for the agent");
        assert_eq!(
            actions,
            vec![
                Action::AnnounceDrain {
                    reason: DrainReason::Signal,
                    deadline: t0 + 60 * S
                },
                Action::RunDrainCommand {
                    reason: DrainReason::Signal,
                    deadline: t0 + 60 * S
                }
            ]
        );
        // Once per drain: a later notice only shortens it.
        let (_, actions) = run(
            phase,
            Event::Drain {
                deregister: false,
                reason: DrainReason::SpotInterruption,
                hard_deadline: Some(t0 + 50 * S),
            },
            &c,
        );
        assert!(actions.is_empty(), "{actions:?}");
    }

    /// With a load balancer to stop first: drain signal, 30 s stop grace, 60 s drain timeout,
    /// and at most `wait` for the load balancer.
    fn with_load_balancer(now: Instant, wait: Duration) -> Ctx {
        Ctx {
            load_balancer: Some(wait),
            ..with_drain_signal(now)
        }
    }

    fn spot(hard: Instant) -> Event {
        Event::Drain {
            reason: DrainReason::SpotInterruption,
            hard_deadline: Some(hard),
            deregister: false,
        }
    }

    fn told(reason: DrainReason, deadline: Instant, hard_deadline: Option<Instant>) -> Phase {
        Phase::Draining(Drain {
            reason,
            deadline,
            told: true,
            hard_deadline,
            signalled: false,
        })
    }

    fn untold(reason: DrainReason, deadline: Instant, hard_deadline: Option<Instant>) -> Phase {
        Phase::Draining(Drain {
            reason,
            deadline,
            told: false,
            hard_deadline,
            signalled: false,
        })
    }

    fn announce(reason: DrainReason, deadline: Instant) -> Vec<Action> {
        vec![
            Action::AnnounceDrain { reason, deadline },
            Action::Signal {
                signal: Sig::USR1,
                to: Target::Forwarded,
            },
        ]
    }

    #[test]
    fn the_agent_hears_of_a_deregistering_drain_only_once_the_load_balancer_is_done() {
        let t0 = Instant::now();
        let spot_reason = DrainReason::SpotInterruption;
        let hard = t0 + 110 * S; // a 2-minute notice minus the 10 s margin
        let operator = |deregister| Event::Drain {
            reason: DrainReason::Operator,
            hard_deadline: None,
            deregister,
        };
        let cases: Vec<Case> = vec![
            (
                "spot with a 5 s delay: readiness 503 (draining), the agent not told yet",
                Phase::Ready,
                spot(hard),
                with_load_balancer(t0, 5 * S),
                untold(spot_reason, t0 + 5 * S, Some(hard)),
                vec![Action::HoldForLoadBalancer {
                    reason: spot_reason,
                    until: t0 + 5 * S,
                }],
            ),
            (
                "the load balancer is done: the agent hears with its full drain budget",
                untold(spot_reason, t0 + 5 * S, Some(hard)),
                Event::LoadBalancerDone,
                with_load_balancer(t0 + 3 * S, 5 * S),
                told(spot_reason, t0 + 63 * S, Some(hard)),
                announce(spot_reason, t0 + 63 * S),
            ),
            (
                "the wait's bound passes: the agent hears anyway",
                untold(spot_reason, t0 + 5 * S, Some(hard)),
                Event::Timer,
                with_load_balancer(t0 + 5 * S, 5 * S),
                told(spot_reason, t0 + 65 * S, Some(hard)),
                announce(spot_reason, t0 + 65 * S),
            ),
            (
                "a 300 s delay on a 2-minute notice: the wait is cut so that the drain (60 s) and \
                 the stop grace (30 s) still fit before the hard deadline",
                Phase::Ready,
                spot(hard),
                with_load_balancer(t0, 300 * S),
                untold(spot_reason, t0 + 20 * S, Some(hard)),
                vec![Action::HoldForLoadBalancer {
                    reason: spot_reason,
                    until: t0 + 20 * S,
                }],
            ),
            (
                "no time left for a wait: deregister anyway, and tell the agent at once",
                Phase::Ready,
                spot(t0 + 80 * S),
                with_load_balancer(t0, 300 * S),
                told(spot_reason, t0 + 50 * S, Some(t0 + 80 * S)),
                [
                    vec![Action::HoldForLoadBalancer {
                        reason: spot_reason,
                        until: t0,
                    }],
                    announce(spot_reason, t0 + 50 * S),
                ]
                .concat(),
            ),
            (
                "a scale-in does not deregister (the group did): told at once",
                Phase::Ready,
                Event::Drain {
                    reason: DrainReason::ScaleIn,
                    hard_deadline: None,
                    deregister: false,
                },
                with_load_balancer(t0, 5 * S),
                told(DrainReason::ScaleIn, t0 + 60 * S, None),
                announce(DrainReason::ScaleIn, t0 + 60 * S),
            ),
            (
                "an operator's drain without --deregister: told at once",
                Phase::Ready,
                operator(false),
                with_load_balancer(t0, 5 * S),
                told(DrainReason::Operator, t0 + 60 * S, None),
                announce(DrainReason::Operator, t0 + 60 * S),
            ),
            (
                "an operator's drain with --deregister waits for the load balancer",
                Phase::Ready,
                operator(true),
                with_load_balancer(t0, 5 * S),
                untold(DrainReason::Operator, t0 + 5 * S, None),
                vec![Action::HoldForLoadBalancer {
                    reason: DrainReason::Operator,
                    until: t0 + 5 * S,
                }],
            ),
            (
                "maintenance deregisters",
                Phase::Ready,
                Event::Drain {
                    reason: DrainReason::Maintenance,
                    hard_deadline: None,
                    deregister: false,
                },
                with_load_balancer(t0, 5 * S),
                untold(DrainReason::Maintenance, t0 + 5 * S, None),
                vec![Action::HoldForLoadBalancer {
                    reason: DrainReason::Maintenance,
                    until: t0 + 5 * S,
                }],
            ),
            (
                "no load balancer: a spot drain tells the agent at once, as before",
                Phase::Ready,
                spot(hard),
                with_drain_signal(t0),
                told(spot_reason, t0 + 60 * S, Some(hard)),
                announce(spot_reason, t0 + 60 * S),
            ),
            (
                "a spot notice during a maintenance wait cuts the wait to the agent's budget",
                untold(DrainReason::Maintenance, t0 + 300 * S, None),
                spot(hard),
                with_load_balancer(t0, 300 * S),
                untold(DrainReason::Maintenance, t0 + 20 * S, Some(hard)),
                vec![],
            ),
            (
                "the agent cannot ask for more time before it was told",
                untold(spot_reason, t0 + 5 * S, Some(hard)),
                Event::Extend(100 * S),
                with_load_balancer(t0, 5 * S),
                untold(spot_reason, t0 + 5 * S, Some(hard)),
                vec![],
            ),
            (
                "a stop signal during the wait is remembered; the agent stays untold",
                untold(spot_reason, t0 + 5 * S, Some(hard)),
                Event::StopSignal,
                with_load_balancer(t0, 5 * S),
                Phase::Draining(Drain {
                    signalled: true,
                    ..match untold(spot_reason, t0 + 5 * S, Some(hard)) {
                        Phase::Draining(d) => d,
                        _ => unreachable!(),
                    }
                }),
                vec![],
            ),
            (
                "a late answer from the load balancer after the agent was told changes nothing",
                told(spot_reason, t0 + 65 * S, Some(hard)),
                Event::LoadBalancerDone,
                with_load_balancer(t0 + 6 * S, 5 * S),
                told(spot_reason, t0 + 65 * S, Some(hard)),
                vec![],
            ),
        ];
        for (name, before, event, c, after, actions) in cases {
            assert_eq!(run(before, event, &c), (after, actions), "{name}");
        }
    }

    #[test]
    fn an_agent_that_cannot_hear_of_a_drain_is_stopped_only_after_the_load_balancer() {
        let t0 = Instant::now();
        let c = Ctx {
            load_balancer: Some(5 * S),
            ..ctx(t0)
        };
        let (phase, actions) = run(Phase::Ready, spot(t0 + 110 * S), &c);
        assert!(
            matches!(phase, Phase::Draining(Drain { told: false, .. })),
            "{phase:?}"
        );
        assert_eq!(actions.len(), 1, "{actions:?}");
        let (phase, actions) = run(phase, Event::LoadBalancerDone, &ctx(t0 + S));
        assert!(matches!(phase, Phase::Stopping(_)), "{phase:?}");
        assert_eq!(actions.last(), Some(&stop_signal()), "{actions:?}");
    }

    #[test]
    fn a_held_drain_called_off_is_ready_again_and_registers_but_a_told_one_goes_on() {
        let t0 = Instant::now();
        let c = Ctx {
            load_balancer: Some(5 * S),
            ..ctx(t0)
        };
        let maintenance = Event::Drain {
            reason: DrainReason::Maintenance,
            hard_deadline: None,
            deregister: false,
        };
        let (held, _) = run(Phase::Ready, maintenance, &c);
        assert!(
            matches!(held, Phase::Draining(Drain { told: false, .. })),
            "{held:?}"
        );
        let called_off = Event::DrainCalledOff(DrainReason::Maintenance);
        assert_eq!(
            run(held.clone(), called_off.clone(), &ctx(t0 + S)),
            (
                Phase::Ready,
                vec![Action::RegisterAgain {
                    reason: DrainReason::Maintenance
                }]
            )
        );
        // Another reason's call-off changes nothing.
        let other = Event::DrainCalledOff(DrainReason::Operator);
        assert_eq!(
            run(held.clone(), other, &ctx(t0 + S)),
            (held.clone(), vec![])
        );
        // Once the agent heard of it, the drain goes on.
        let listening = Ctx {
            listeners: true,
            ..ctx(t0 + S)
        };
        let (told, _) = run(held, Event::LoadBalancerDone, &listening);
        assert!(
            matches!(told, Phase::Draining(Drain { told: true, .. })),
            "{told:?}"
        );
        assert_eq!(
            run(told.clone(), called_off, &ctx(t0 + 2 * S)),
            (told, vec![])
        );
    }
}
