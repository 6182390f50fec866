//! Auto Scaling lifecycle actions: the launch hook completed once the agent (and every other
//! guard's agent on this host) is ready, heartbeats once the instance is in its termination wait
//! state while the agent drains, and the termination hook completed only after the agent and its
//! whole process group are gone — and the other guards' agents on this host too.
//!
//! The invariant the product exists for — never complete the termination hook while the agent
//! runs — is a type: [`LifecycleHandle::finish`] takes the supervisor's [`Outcome`], which holds
//! the [`ChildExit`] that only the reaper can make, and the supervisor returns it only once the
//! agent's group is empty. This does
//! not compile:
//!
//! ```compile_fail
//! // ChildExit has private fields and no public constructor: no code outside the reaper can
//! // make one, so no code can complete the termination hook before the agent has exited.
//! let exit = agent_guard::ChildExit { pid: 1, kind: todo!() };
//! ```
//!
//! Several guards on one host register in `--hooks-dir` ([`hosthooks`]); the last agent out
//! completes the termination hook, however late the wait state comes ([`termination`]). The
//! calls and their retries are [`hook_calls`]'.
//!
//! [`hosthooks`]: crate::hosthooks
//! [`termination`]: crate::aws::termination
//! [`hook_calls`]: crate::aws::hook_calls

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Interval, MissedTickBehavior};

use crate::aws::backoff;
use crate::aws::context::SharedAws;
use crate::aws::hook_calls::{HookApi, MAX_RETRY_WINDOW};
use crate::aws::notices::ImdsStatus;
use crate::aws::status::LifecycleBoard;
use crate::aws::termination::{Gone, Shared, on_host};
use crate::aws::wait_state::{self, Stage};
use crate::config::settings::{HookResult, LifecycleSettings};
use crate::fmt::format_duration;
use crate::hosthooks::agent::AgentId;
use crate::hosthooks::{Decision, HookKind, HooksDirError, Registration};
use crate::journal::{Awaiting, Record};
use crate::machine::state::{DrainReason, Phase};
use crate::machine::supervisor::{Outcome, ToLifecycle};
use crate::model::HookState;
use crate::model::hooks::HookStatus;
use crate::model::lifecycle::AwaitingStatus;
use crate::model::lifecycle_state::LifecycleState;
use crate::model::run::RunStats;
use crate::process::exit::{ChildExit, ExitKind};
use crate::process::sig::Sig;
use crate::process::signals::SignalSource;

/// The result for a termination hook given how the agent ended: CONTINUE when it stopped
/// cleanly (exited 0, or ended by the guard's stop signal within the grace period, whether it
/// died of the signal or exited 128+N as a JVM does), else `--on-unclean-exit`.
pub fn result_for(
    exit: &ChildExit,
    stop_signal: Sig,
    sigkilled: bool,
    on_unclean: HookResult,
) -> HookResult {
    // An OOM kill in the agent's cgroup is never a clean stop, whatever status followed.
    let clean = exit.oom_kills() == 0
        && match exit.kind() {
            ExitKind::Code(0) => true,
            ExitKind::Code(code) => !sigkilled && i32::from(code) == 128 + stop_signal.raw(),
            ExitKind::Signal { signal, .. } => !sigkilled && signal == stop_signal,
        };
    if clean {
        HookResult::Continue
    } else {
        on_unclean
    }
}

/// What the lifecycle work reads besides the group: the supervisor's phase (the launch hook on
/// readiness, heartbeats while a terminating drain runs), what the supervisor tells it
/// ([`ToLifecycle`]), and the warm-pool hold.
pub struct Reads {
    pub phase: watch::Receiver<Phase>,
    pub told: mpsc::Receiver<ToLifecycle>,
    pub held: watch::Receiver<Option<String>>,
    /// The supervisor's run: the agent's pid, recorded in the hooks directory.
    pub run: watch::Receiver<RunStats>,
    /// What IMDS says (the poller's status): once the run is over, whether the instance is
    /// terminating although no drain reached the supervisor.
    pub imds: watch::Receiver<ImdsStatus>,
}

/// What the lifecycle work is told once the run is over.
#[derive(Debug)]
pub struct RunOver {
    /// The supervisor's outcome: the proof that the agent and its group are gone.
    pub outcome: Outcome,
    /// After a crash loop the instance was marked Unhealthy (`--on-crash-loop unhealthy`): the
    /// group will terminate it, and its termination hook will wait for this guard.
    pub marked_unhealthy: bool,
    /// The guard stays once the hook work is over (back in a warm pool, it starts the agent
    /// again when the instance goes into service): said so, instead of "the guard exits".
    pub guard_stays: bool,
}

/// The running lifecycle work; `finish` ends it once the agent is gone.
pub struct LifecycleHandle {
    finish: oneshot::Sender<RunOver>,
    /// The AWS context it works with, for the lifecycle work of a next run.
    aws: Arc<SharedAws>,
    task: tokio::task::JoinHandle<()>,
}

/// The longest the guard waits, after the agent is gone, for the termination hook to be
/// completed or given up: after a crash loop the termination may come up to the longest hook
/// timeout (7200 s) after the Unhealthy mark; the wait state may then come the longest
/// deregistration delay plus the longest hook timeout after the notice, and the completion may
/// then be throttled.
const FINISH_WITHIN: Duration = Duration::from_secs(7200 + 3600 + 7200 + 600 + 60);
/// How long a late setup may take once the agent has already exited.
const LATE_SETUP_WITHIN: Duration = Duration::from_secs(20);
/// A guard alone when its agent is ready waits this long after registering before completing
/// the launch hook: guards started together by systemd register within it.
const LAUNCH_SETTLE: Duration = Duration::from_secs(2);
/// How often a guard whose agent is ready looks whether the other guards' agents are too.
const LAUNCH_POLL: Duration = Duration::from_millis(500);

/// This guard's registrations in `--hooks-dir`, one per hook it handles.
#[derive(Default)]
pub struct HostHooks {
    terminate: Option<Shared>,
    launch: Option<Shared>,
}

impl HostHooks {
    /// Registers for each configured hook, before the agent starts, so that the other guards on
    /// this host wait for it from the start. An unusable `--hooks-dir` is the guard's failure
    /// when it was given; the default one (`/run/agent-guard`, root's) is only warned about,
    /// and the hooks are then handled as by a guard alone on the host. A directory that another
    /// user could change is refused either way: going alone there would hand that user the
    /// decision to end the instance under the other guards' agents.
    pub fn register(settings: &LifecycleSettings, name: &str) -> Result<HostHooks, HooksDirError> {
        let dir = &settings.hooks_dir;
        let one = |kind, hook: &Option<String>| -> Result<Option<Shared>, HooksDirError> {
            let Some(hook) = hook else {
                return Ok(None);
            };
            match Registration::register(dir, kind, hook, name, settings.on_unclean_exit) {
                Ok(reg) => Ok(Some(Arc::new(Mutex::new(reg)))),
                Err(err)
                    if !settings.hooks_dir_given
                        && !matches!(err, HooksDirError::Untrusted { .. }) =>
                {
                    tracing::warn!(error = %err, "lifecycle: the default --hooks-dir is unusable; handling the hooks as the only guard on this host (give every guard here a --hooks-dir they can all write)");
                    Ok(None)
                }
                Err(err) => Err(err),
            }
        };
        Ok(HostHooks {
            terminate: one(HookKind::Terminate, &settings.terminate_hook)?,
            launch: one(HookKind::Launch, &settings.launch_hook)?,
        })
    }

    /// Removes this guard's registrations as it exits (a result still pending stays).
    async fn leave(self) {
        for reg in [self.terminate, self.launch].into_iter().flatten() {
            let left = tokio::task::spawn_blocking(move || {
                let reg = match Arc::try_unwrap(reg) {
                    Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
                    // Still shared by a task that outlived its bound: the lock goes with the process.
                    Err(_) => return Ok(()),
                };
                reg.leave()
            })
            .await;
            if let Ok(Err(err)) = left {
                tracing::warn!(error = %err, "lifecycle: cannot remove this guard's registration");
            }
        }
    }
}

impl LifecycleHandle {
    /// Starts the lifecycle work for this run.
    pub fn start(
        settings: LifecycleSettings,
        aws: Arc<SharedAws>,
        reads: Reads,
        host: HostHooks,
    ) -> Self {
        let (finish, finish_rx) = oneshot::channel();
        let task = tokio::spawn(run(settings, aws.clone(), reads, host, finish_rx));
        LifecycleHandle { finish, aws, task }
    }

    /// The AWS context this work shares with the others.
    pub fn aws(&self) -> Arc<SharedAws> {
        self.aws.clone()
    }

    /// The agent and its whole group are gone (`outcome` proves it): completes the termination
    /// hook if a terminating drain ran (and this guard is the last on the host), and waits,
    /// within a bound, for the work to end. SIGTERM or SIGINT on `signals` meanwhile (an
    /// operator stopping the unit while the instance deregisters; the stream the supervisor
    /// handed on, so nothing it had read is lost) ends the wait: the hook is left to the other
    /// guards, or to its timeout.
    ///
    /// Returns the signal stream, or `None` if a stop signal ended the wait (the guard is to
    /// exit then).
    pub async fn finish(self, over: RunOver, mut signals: SignalSource) -> Option<SignalSource> {
        let _ = self.finish.send(over);
        let mut task = self.task;
        tokio::select! {
            ended = tokio::time::timeout(FINISH_WITHIN, &mut task) => {
                if ended.is_err() {
                    task.abort();
                    tracing::error!("lifecycle: gave up waiting for the hook completion");
                }
                Some(signals)
            }
            sig = stop_signal(&mut signals) => {
                task.abort();
                tracing::warn!(signal = %sig, "lifecycle: stopped while the hook work waited; the hook is left to the other guards on this host or to its timeout; the guard exits with the agent's status");
                None
            }
        }
    }
}

impl LifecycleHandle {
    /// The guard stops without having started the agent (held in a warm pool): there is no
    /// termination hook to complete, and a launch completion in flight gets a moment to end.
    pub async fn end_without_agent(self) {
        drop(self.finish);
        let mut task = self.task;
        if tokio::time::timeout(NO_AGENT_WITHIN, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// How long [`LifecycleHandle::end_without_agent`] waits.
const NO_AGENT_WITHIN: Duration = Duration::from_secs(5);

/// The next SIGTERM or SIGINT, once the supervisor (which handled them until the agent was gone)
/// has handed the stream on; never, if it cannot be read any more.
async fn stop_signal(signals: &mut SignalSource) -> &'static str {
    loop {
        match signals.next().await {
            Some(Sig::INT) => return "SIGINT",
            Some(Sig::TERM) => return "SIGTERM",
            Some(_) => {}
            None => return std::future::pending().await,
        }
    }
}

fn set_hook(board: &LifecycleBoard, terminate: bool, f: impl FnOnce(&mut HookStatus)) {
    if terminate {
        board.terminate(f);
    } else {
        board.launch(f);
    }
}

fn hook_status(name: &Option<String>) -> Option<HookStatus> {
    name.as_ref().map(|name| HookStatus {
        name: name.clone(),
        state: HookState::Waiting,
        ..HookStatus::default()
    })
}

async fn run(
    settings: LifecycleSettings,
    aws: Arc<SharedAws>,
    reads: Reads,
    host: HostHooks,
    mut finish: oneshot::Receiver<RunOver>,
) {
    let board = aws.board().clone();
    board.update(|status| {
        status.terminate = hook_status(&settings.terminate_hook);
        status.launch = hook_status(&settings.launch_hook);
    });
    // Only the group and the instance id are waited for: the hook's timeout is read alongside.
    let setup = tokio::select! {
        setup = HookApi::setup(&settings, &aws, &board) => setup,
        done = &mut finish => {
            late(&settings, &aws, &board, reads, &host, done.ok()).await;
            host.leave().await;
            return;
        }
    };
    match setup {
        Ok(api) => {
            let api = Arc::new(api);
            let learning = learn_hook_timeout(&api, &settings, &board);
            Watch::new(api, &settings, &board, &host, reads)
                .run(finish)
                .await;
            learning.abort();
        }
        Err(err) => {
            let record = Record::HooksOff {
                error: err.to_string(),
            };
            tracing::error!(error = %err, journal = %record.json(), "lifecycle hooks are off");
            board.update(|l| l.error = Some(err.to_string()));
            let _ = finish.await;
        }
    }
    host.leave().await;
}

/// The hook's heartbeat timeout, read in the background (see [`HookApi`]); aborted once the
/// hook work ends.
fn learn_hook_timeout(
    api: &Arc<HookApi>,
    settings: &LifecycleSettings,
    board: &LifecycleBoard,
) -> tokio::task::AbortHandle {
    let (api, board, hook) = (api.clone(), board.clone(), settings.terminate_hook.clone());
    tokio::spawn(async move {
        if let Some(hook) = hook {
            api.learn_hook_timeout(&hook, &board).await;
        }
    })
    .abort_handle()
}

/// The agent ended before the identity was known: one more try at the set-up, bounded, and the
/// hooks handled from the outcome alone.
async fn late(
    settings: &LifecycleSettings,
    aws: &Arc<SharedAws>,
    board: &LifecycleBoard,
    reads: Reads,
    host: &HostHooks,
    over: Option<RunOver>,
) {
    let setup = tokio::time::timeout(LATE_SETUP_WITHIN, HookApi::setup(settings, aws, board)).await;
    let (Ok(Ok(api)), Some(over)) = (setup, over) else {
        tracing::error!(
            "lifecycle: the agent exited before the group and instance were known; no hook completed"
        );
        return;
    };
    let mut watch = Watch::new(Arc::new(api), settings, board, host, reads);
    // An agent that never got ready (a fast crash loop, say) abandons the launch (`finish`
    // does); one that was ready leaves it to the hook's timeout.
    if over.outcome.ready {
        watch.launch_done = true;
    }
    watch.finish(Some(over)).await;
    if let Some(task) = watch.launch_task.take() {
        let _ = tokio::time::timeout(LATE_SETUP_WITHIN, task).await;
    }
}

/// The lifecycle work alongside the supervisor: the launch hook on readiness, the wait state
/// looked for and heartbeats sent while a terminating drain runs, the termination hook once the
/// agent is gone.
struct Watch<'a> {
    api: Arc<HookApi>,
    settings: &'a LifecycleSettings,
    board: &'a LifecycleBoard,
    host: &'a HostHooks,
    phase: watch::Receiver<Phase>,
    told: mpsc::Receiver<ToLifecycle>,
    held: watch::Receiver<Option<String>>,
    run: watch::Receiver<RunStats>,
    imds: watch::Receiver<ImdsStatus>,
    /// A drain that ends the instance runs: heartbeats keep the hook open. Whether the hook is
    /// completed is decided from the `Outcome` alone.
    terminating: bool,
    /// When the terminating drain began, and for what.
    drain: Option<(Instant, DrainReason)>,
    /// The instance was seen in its wait state: heartbeat from now on.
    wait_seen: bool,
    /// Heartbeats (or, before the wait state, looks) while the agent drains; `None` when there
    /// is nothing left to keep open.
    tick: Option<Interval>,
    launch_done: bool,
    launch_task: Option<tokio::task::JoinHandle<()>>,
    /// The agent was held back in a warm pool (`--in-warm-pool wait`).
    was_held: bool,
    /// Released from the warm pool: the next launch completion is a new round on the host.
    launch_again: bool,
    /// The agent last recorded in this guard's termination registration.
    recorded_agent: Option<i32>,
}

impl<'a> Watch<'a> {
    fn new(
        api: Arc<HookApi>,
        settings: &'a LifecycleSettings,
        board: &'a LifecycleBoard,
        host: &'a HostHooks,
        reads: Reads,
    ) -> Self {
        Watch {
            api,
            settings,
            board,
            host,
            phase: reads.phase,
            told: reads.told,
            held: reads.held,
            run: reads.run,
            imds: reads.imds,
            terminating: false,
            drain: None,
            wait_seen: false,
            tick: None,
            launch_done: settings.launch_hook.is_none(),
            launch_task: None,
            was_held: false,
            launch_again: false,
            recorded_agent: None,
        }
    }

    /// Runs until `finish` says the agent is gone.
    async fn run(mut self, mut finish: oneshot::Receiver<RunOver>) {
        let mut hook_timeout = self.api.hook_timeout_changes();
        let mut timeout_open = true;
        if self.held.borrow_and_update().is_some() {
            self.on_hold(true);
        }
        let mut told_open = true;
        self.record_agent();
        loop {
            tokio::select! {
                changed = self.held.changed() => {
                    if changed.is_ok() {
                        let now = self.held.borrow_and_update().is_some();
                        self.on_hold(now);
                    }
                }
                changed = hook_timeout.changed(), if timeout_open => {
                    timeout_open = changed.is_ok();
                    self.new_cadence();
                }
                changed = self.phase.changed() => {
                    if changed.is_err() {
                        // The supervisor is gone; `finish` follows.
                        let done = (&mut finish).await;
                        self.finish(done.ok()).await;
                        break;
                    }
                    let now = self.phase.borrow_and_update().clone();
                    self.on_phase(&now);
                }
                _ = async { self.tick.as_mut().expect("guarded by the branch condition").tick().await }, if self.tick.is_some() => {
                    self.keep_open().await;
                }
                told = self.told.recv(), if told_open => match told {
                    Some(told) => self.on_told(told).await,
                    None => told_open = false,
                },
                done = &mut finish => {
                    self.finish(done.ok()).await;
                    break;
                }
            }
        }
        if let Some(task) = self.launch_task {
            if !task.is_finished() {
                tracing::info!(
                    "lifecycle: waiting for the launch hook's completion (at most 1m) before the hook work ends"
                );
            }
            let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
        }
    }

    /// What the supervisor told: the agent asked for more time (heartbeat now), or it was not
    /// ready within `--ready-timeout` (the launch is abandoned).
    async fn on_told(&mut self, told: ToLifecycle) {
        match told {
            ToLifecycle::Extended if self.terminating => {
                tracing::info!("lifecycle: the agent asked for more time; heartbeat now");
                self.keep_open().await;
            }
            ToLifecycle::Extended => {}
            ToLifecycle::ReadyTimedOut if !self.launch_done => {
                self.launch(
                    HookResult::Abandon,
                    "the agent was not ready within --ready-timeout",
                );
            }
            ToLifecycle::ReadyTimedOut => {}
        }
    }

    /// The hook's timeout became known while the agent drains: heartbeats at the cadence it
    /// sets from now on, the next one a new interval from now.
    fn new_cadence(&mut self) {
        let every = self.api.heartbeat_interval();
        if let Some(tick) = self.tick.as_mut()
            && tick.period() != every
        {
            *tick = ticks(every);
        }
    }

    fn on_phase(&mut self, now: &Phase) {
        self.record_agent();
        if !self.launch_done && matches!(now, Phase::Ready) {
            self.launch(HookResult::Continue, "the agent is ready");
        }
        // Not between an exit and a restart: only once no agent will start again.
        if !self.launch_done && now.ended() {
            self.launch(HookResult::Abandon, "the agent exited before it was ready");
        }
        if let Some(reason) = now.drain_reason()
            && !self.terminating
            && reason.ends_instance()
            && self.settings.terminate_hook.is_some()
        {
            self.terminating = true;
            self.drain = Some((Instant::now(), reason));
            self.tick = Some(ticks(self.api.heartbeat_interval()));
            set_hook(self.board, true, |h| h.state = HookState::Heartbeating);
        }
    }

    /// Records the agent that runs now (its process group and start time, and its cgroup when
    /// it has one) in this guard's termination registration, once per agent: should this guard
    /// die while it runs, the other guards on the host wait for it to be gone.
    fn record_agent(&mut self) {
        let (pid, cgroup) = {
            let run = self.run.borrow();
            (run.agent_pid, run.agent_cgroup.clone())
        };
        let (Some(reg), Some(pid)) = (&self.host.terminate, pid) else {
            return;
        };
        if self.recorded_agent == Some(pid) {
            return;
        }
        self.recorded_agent = Some(pid);
        let reg = reg.clone();
        tokio::spawn(async move {
            let recorded = on_host(&reg, move |r| match AgentId::of(pid, cgroup) {
                Some(agent) => r.agent_started(agent),
                None => Ok(()),
            })
            .await;
            if let Err(err) = recorded {
                tracing::warn!(error = %err, "lifecycle: cannot record the agent in the hooks directory (should this guard die, the others would not wait for its agent)");
            }
        });
    }

    /// `--in-warm-pool wait`: a held instance completes its launch hook at once, without the
    /// agent (the group pauses it at `Warmed:Pending:Wait`). Released, it pauses again at
    /// `Pending:Wait`, and that launch hook waits for the agent's readiness as at any launch.
    fn on_hold(&mut self, held: bool) {
        if self.settings.launch_hook.is_none() {
            return;
        }
        if held && !self.was_held {
            self.was_held = true;
            if !self.launch_done {
                self.launch(
                    HookResult::Continue,
                    "launched into a warm pool; the agent starts once the instance is InService",
                );
            }
        } else if !held && self.was_held {
            self.was_held = false;
            self.launch_done = false;
            self.launch_again = true;
            set_hook(self.board, false, |h| {
                h.state = HookState::Waiting;
                h.result = None;
            });
            let now = self.phase.borrow().clone();
            self.on_phase(&now);
        }
    }

    /// Keeps the termination hook open while the agent drains: a heartbeat once the instance is
    /// in its wait state, before that a look at its state. Heartbeats start when the wait state
    /// does (the hook's timeout starts then too), so a long deregistration costs one look per
    /// heartbeat interval and no failed heartbeat.
    async fn keep_open(&mut self) {
        let Some(hook) = self.settings.terminate_hook.as_deref() else {
            return;
        };
        if self.wait_seen || self.spot() {
            self.api.heartbeat(hook, self.board, self.spot()).await;
            return;
        }
        match self.api.look(self.board).await {
            Ok(Stage::Waiting(state)) => {
                self.wait_seen = true;
                let record = Record::WaitStateSeen {
                    hook: hook.to_string(),
                    state: LifecycleState::parse(&state),
                };
                tracing::info!(hook, journal = %record.json(), "lifecycle: the instance is in {state}; heartbeats start");
                self.board.update(|l| l.awaiting = None);
                set_hook(self.board, true, |h| h.state = HookState::Heartbeating);
                self.api.heartbeat(hook, self.board, false).await;
            }
            Ok(Stage::Over(state)) => {
                tracing::info!(hook, state = %state, "lifecycle: the instance is past its wait state ({state}); no heartbeats");
                self.tick = None;
            }
            Ok(stage) => self.awaiting_wait_state(hook, &stage),
            Err(err) => {
                // Without the state, heartbeat blindly: "no active action" is then expected.
                tracing::debug!(hook, error = %err.text(), "lifecycle: cannot read the instance's state; heartbeat instead");
                self.api.heartbeat(hook, self.board, true).await;
            }
        }
    }

    fn awaiting_wait_state(&self, hook: &str, stage: &Stage) {
        let detail = stage.detail();
        let known = self.board.get().awaiting.map(|a| a.detail);
        if known.as_deref() == Some(detail.as_str()) {
            return;
        }
        let started = self.drain.map_or_else(Instant::now, |(at, _)| at);
        let since = std::time::SystemTime::now()
            .checked_sub(started.elapsed())
            .unwrap_or_else(std::time::SystemTime::now);
        let status = AwaitingStatus {
            what: Awaiting::WaitState,
            since,
            detail,
        };
        let record = Record::HookAwaiting {
            hook: hook.to_string(),
            awaiting: Awaiting::WaitState,
            detail: status.detail.clone(),
        };
        tracing::info!(hook, state = stage.state(), journal = %record.json(), "lifecycle: {}", status.text());
        self.board.update(|l| l.awaiting = Some(status));
        set_hook(self.board, true, |h| h.state = HookState::Awaiting);
    }

    /// The terminating drain is a spot interruption: the group may hold no action at all, and
    /// EC2 ends the instance at the notice's time whatever the group does.
    fn spot(&self) -> bool {
        matches!(self.drain, Some((_, DrainReason::SpotInterruption)))
    }

    fn launch(&mut self, result: HookResult, why: &'static str) {
        self.launch_done = true;
        let task = Launch {
            api: self.api.clone(),
            board: self.board.clone(),
            hook: self.settings.launch_hook.clone().unwrap_or_default(),
            registration: self.host.launch.clone(),
            new_round: std::mem::take(&mut self.launch_again),
            held: self.was_held,
        };
        self.launch_task = Some(tokio::spawn(task.run(result, why)));
    }

    /// Whether the run's end is the instance's: decided from the outcome (the reason that ended
    /// the run: a scale-in that overtook an operator's drain, a drain between an exit and a
    /// restart or after a self-exit, with no draining phase to see), else from IMDS (a scale-in
    /// read just as the agent's group emptied, before it reached the supervisor), else, after a
    /// crash loop marked the instance Unhealthy, by waiting for the group to terminate it.
    async fn terminating_after(&mut self, over: &RunOver, hook: &str) -> bool {
        if over.outcome.drain.is_some_and(DrainReason::ends_instance) {
            return true;
        }
        if self.imds_says_terminated() {
            tracing::info!(
                hook,
                "lifecycle: IMDS says the instance is Terminated, though no drain reached the agent; the termination hook is this guard's to complete"
            );
            self.drain = Some((Instant::now(), DrainReason::ScaleIn));
            return true;
        }
        if over.marked_unhealthy && self.await_termination(hook).await {
            self.drain = Some((Instant::now(), DrainReason::ScaleIn));
            return true;
        }
        false
    }

    /// IMDS `autoscaling/target-lifecycle-state` reads `Terminated` (a scale-in).
    fn imds_says_terminated(&self) -> bool {
        let state = self.imds.borrow().lifecycle_state.clone();
        state.is_some_and(|s| LifecycleState::parse(&s) == LifecycleState::Terminated)
    }

    /// After a crash loop marked the instance Unhealthy, the group terminates it, and its
    /// termination hook (if it has one) waits for this guard: the guard stays (health served,
    /// readiness 503) until IMDS says `Terminated`, bounded by the hook's timeout, then completes
    /// it. `false` if the bound passed first. A stop signal ends the wait at once
    /// ([`LifecycleHandle::finish`]).
    async fn await_termination(&mut self, hook: &str) -> bool {
        let bound = self
            .api
            .hook_timeout()
            .unwrap_or(wait_state::DEFAULT_HOOK_TIMEOUT);
        let status = AwaitingStatus {
            what: Awaiting::Termination,
            since: SystemTime::now(),
            detail: format!(
                "the instance is marked Unhealthy; IMDS target-lifecycle-state Terminated, at most {}",
                format_duration(bound)
            ),
        };
        let record = Record::HookAwaiting {
            hook: hook.to_string(),
            awaiting: Awaiting::Termination,
            detail: status.detail.clone(),
        };
        tracing::info!(hook, journal = %record.json(), "lifecycle: the agent is gone after a crash loop; {}; the guard stays to complete the termination hook (a stop signal ends the wait)", status.text());
        self.board.update(|l| l.awaiting = Some(status));
        set_hook(self.board, true, |h| h.state = HookState::Awaiting);
        let imds = &mut self.imds;
        let terminated = async move {
            let said = imds.wait_for(|s| {
                s.lifecycle_state
                    .as_deref()
                    .is_some_and(|s| LifecycleState::parse(s) == LifecycleState::Terminated)
            });
            if said.await.is_err() {
                // No poller any more: only the bound ends the wait.
                std::future::pending::<()>().await;
            }
        };
        let seen = tokio::time::timeout(bound, terminated).await.is_ok();
        self.board.update(|l| l.awaiting = None);
        if seen {
            tracing::info!(
                hook,
                "lifecycle: IMDS says the instance is Terminated; the termination hook is completed once it is in its wait state"
            );
        } else {
            set_hook(self.board, true, |h| h.state = HookState::GaveUp);
            tracing::warn!(hook, waited = %format_duration(bound), "lifecycle: the group did not terminate the instance within the hook's timeout; the guard exits with the agent's status");
        }
        seen
    }

    async fn finish(&mut self, over: Option<RunOver>) {
        // The run ended (the last phase change may not have been seen yet): an agent that never
        // got ready abandons the launch.
        if !self.launch_done {
            self.launch(HookResult::Abandon, "the agent exited before it was ready");
        }
        let (Some(over), Some(hook)) = (over, self.settings.terminate_hook.as_deref()) else {
            return;
        };
        let terminating = self.terminating_after(&over, hook).await;
        let outcome = &over.outcome;
        let exit = &outcome.exit;
        let result = result_for(
            exit,
            self.settings.stop_signal,
            outcome.sigkilled,
            self.settings.on_unclean_exit,
        );
        if terminating {
            let gone = exit.everything_gone().map_or("unproven", |g| g.as_str());
            tracing::info!(hook = %hook, result = result.as_str(), agent = %exit, gone, "lifecycle: the agent and its group are gone");
        }
        let gone = Gone {
            api: &self.api,
            board: self.board,
            hook,
            result,
            terminating,
            drain_started: self.drain.map(|(at, _)| at),
            wait_seen: self.wait_seen,
            spot: outcome.drain == Some(DrainReason::SpotInterruption),
            registration: self.host.terminate.clone(),
            guard_stays: over.guard_stays,
        };
        let state = gone.finish().await;
        if terminating {
            let record = Record::HookFinished {
                hook: hook.to_string(),
                result,
                state,
            };
            tracing::debug!(hook, journal = %record.json(), "lifecycle: hook work ended");
        }
    }
}

/// Heartbeats (or looks for the wait state) every `every`, the first one `every` from now.
fn ticks(every: Duration) -> Interval {
    let mut tick = tokio::time::interval_at(
        crate::machine::state::later(Instant::now(), every).into(),
        every,
    );
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// The launch hook's completion, agreed with the other guards on this host: CONTINUE once every
/// registered guard's agent is ready, ABANDON from any guard at once.
struct Launch {
    api: Arc<HookApi>,
    board: LifecycleBoard,
    hook: String,
    registration: Option<Shared>,
    /// The hook pauses the instance a second time (out of a warm pool): the registration
    /// starts a new round first.
    new_round: bool,
    /// Completed for a warm pool, the agent held back: the registration says held, not ready.
    held: bool,
}

impl Launch {
    async fn run(self, result: HookResult, why: &'static str) {
        if !self.agreed(result).await {
            return;
        }
        tracing::info!(hook = %self.hook, result = result.as_str(), "lifecycle: completing the launch hook: {why}");
        let state = self
            .api
            .complete(&self.board, &self.hook, result, false)
            .await;
        set_hook(&self.board, false, |h| {
            h.state = state;
            h.result = Some(result);
        });
        if let Some(reg) = &self.registration {
            let done = state.as_str();
            if let Err(err) = on_host(reg, move |r| r.finish(done, Some(result))).await {
                tracing::warn!(error = %err, "lifecycle: cannot record the launch hook's end in the hooks directory");
            }
        }
    }

    /// Whether this guard is the one to complete the launch hook (waiting for the others as
    /// long as it takes, bounded by the hook's own timeout).
    async fn agreed(&self, result: HookResult) -> bool {
        let Some(reg) = &self.registration else {
            return true;
        };
        if self.new_round
            && let Err(err) = on_host(reg, Registration::new_round).await
        {
            tracing::warn!(error = %err, "lifecycle: cannot start the launch hook's new round in the hooks directory; completing it as if alone");
            return true;
        }
        if result == HookResult::Continue {
            let age = on_host(reg, |r| Ok(r.age())).await.unwrap_or(LAUNCH_SETTLE);
            tokio::time::sleep(LAUNCH_SETTLE.saturating_sub(age)).await;
        }
        let give_up = Instant::now() + wait_state::DEFAULT_HOOK_TIMEOUT.max(MAX_RETRY_WINDOW);
        let mut shown = Vec::new();
        let mut decision = match result {
            HookResult::Continue if self.held => on_host(reg, Registration::held).await,
            HookResult::Continue => on_host(reg, Registration::agent_ready).await,
            HookResult::Abandon => on_host(reg, Registration::launch_failed).await,
        };
        loop {
            match decision {
                Ok(Decision::Complete { .. }) => return true,
                Ok(Decision::Done(done)) => {
                    tracing::info!(hook = %self.hook, by = %done.by, "lifecycle: the launch hook was {} by {} ({})", done.state, done.by, done.result.map_or("-", HookResult::as_str));
                    set_hook(&self.board, false, |h| {
                        h.state = HookState::LeftToOthers;
                        h.result = done.result;
                    });
                    return false;
                }
                Ok(Decision::NotNeeded) => return false,
                Ok(Decision::Wait { others }) => {
                    if others != shown {
                        tracing::info!(hook = %self.hook, others = %others.join(", "), "lifecycle: the agent is ready; the launch hook waits for the other guards on this host");
                        set_hook(&self.board, false, |h| h.state = HookState::Awaiting);
                        shown = others;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "lifecycle: cannot read the hooks directory; completing the launch hook as if alone");
                    return true;
                }
            }
            if Instant::now() >= give_up {
                tracing::error!(hook = %self.hook, "lifecycle: gave up waiting for the other guards' agents to be ready");
                return false;
            }
            tokio::time::sleep(backoff::within(LAUNCH_POLL)).await;
            decision = on_host(reg, Registration::launch).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_and_unclean_exits_table() {
        let term = Sig::TERM;
        let abandon = HookResult::Abandon;
        let cases = [
            (
                ChildExit::for_test(0),
                false,
                HookResult::Continue,
                "exit 0",
            ),
            (
                ChildExit::for_test(143),
                false,
                HookResult::Continue,
                "exit 128+TERM, as a JVM does",
            ),
            (
                ChildExit::for_test(143),
                true,
                abandon,
                "exit 143 after our SIGKILL is not ours",
            ),
            (ChildExit::for_test(1), false, abandon, "a failure"),
            (
                ChildExit::for_test_signal(Sig::TERM),
                false,
                HookResult::Continue,
                "killed by our stop signal",
            ),
            (
                ChildExit::for_test_signal(Sig::KILL),
                true,
                abandon,
                "SIGKILLed after the grace",
            ),
            (
                ChildExit::for_test_signal(Sig::KILL),
                false,
                abandon,
                "killed by someone else",
            ),
            (
                ChildExit::for_test_signal(Sig::USR1),
                false,
                abandon,
                "another signal",
            ),
        ];
        for (exit, killed, want, why) in cases {
            assert_eq!(result_for(&exit, term, killed, abandon), want, "{why}");
        }
        // With --stop-signal KILL a death by SIGKILL reads as the stop, unless the OOM killer
        // was counted.
        assert_eq!(
            result_for(&ChildExit::for_test_oom(), Sig::KILL, false, abandon),
            abandon,
            "OOM-killed"
        );
        assert_eq!(
            result_for(
                &ChildExit::for_test(0).for_test_oom_kills(2),
                term,
                false,
                abandon
            ),
            abandon,
            "exited 0 after OOM kills in its cgroup"
        );
        assert_eq!(
            result_for(&ChildExit::for_test(1), term, false, HookResult::Continue),
            HookResult::Continue,
            "--on-unclean-exit continue"
        );
    }
}
