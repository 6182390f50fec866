//! Auto Scaling lifecycle actions: heartbeats while the agent drains, the termination hook
//! completed only after the agent and its whole process group are gone, and the launch hook
//! completed once the agent is ready.
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
//! Errors: throttling, 5xx, timeouts and `ResourceContention` are retried with exponential
//! backoff and jitter, within the hook's heartbeat timeout (10 minutes at most); "No active
//! Lifecycle Action found" is retried for a short window (IMDS can show `Terminated` before the
//! group has the instance in `Terminating:Wait`), then logged once as nothing to complete; a
//! missing permission is one line naming the IAM action.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use tokio::time::{Interval, MissedTickBehavior};

use crate::agent::hub::{HookState, HookStatus, Hub};
use crate::aws::api::{CallError, record_call, record_result};
use crate::aws::context::{AwsContext, SharedAws};
use crate::config::settings::{HookResult, LifecycleSettings};
use crate::fmt::format_duration;
use crate::journal::Record;
use crate::machine::state::{DrainReason, Phase};
use crate::machine::supervisor::Outcome;
use crate::process::exit::{ChildExit, ExitKind};
use crate::process::sig::Sig;

/// The result for a termination hook given how the agent ended: CONTINUE when it stopped
/// cleanly (exited 0, or ended by the guard's stop signal within the grace period, whether it
/// died of the signal or exited 128+N as a JVM does), else `--on-unclean-exit`.
pub fn result_for(
    exit: &ChildExit,
    stop_signal: Sig,
    sigkilled: bool,
    on_unclean: HookResult,
) -> HookResult {
    let clean = match exit.kind() {
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

/// The running lifecycle work; `finish` ends it once the agent is gone.
pub struct LifecycleHandle {
    finish: oneshot::Sender<Outcome>,
    task: tokio::task::JoinHandle<()>,
}

/// The longest the guard waits, after the agent is gone, for the termination hook to be
/// completed or given up.
const FINISH_WITHIN: Duration = Duration::from_secs(11 * 60);
/// The longest a retryable error is retried.
const MAX_RETRY_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Bounds of the window in which "no active lifecycle action" is retried.
const NO_ACTION_WINDOW: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(60));
/// The heartbeat interval when the hook's timeout cannot be read.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
/// How long a late setup may take once the agent has already exited.
const LATE_SETUP_WITHIN: Duration = Duration::from_secs(20);

impl LifecycleHandle {
    /// Starts the lifecycle work for this run.
    pub fn start(settings: LifecycleSettings, aws: Arc<SharedAws>, hub: Arc<Hub>) -> Self {
        let (finish, finish_rx) = oneshot::channel();
        let task = tokio::spawn(run(settings, aws, hub, finish_rx));
        LifecycleHandle { finish, task }
    }

    /// The agent and its whole group are gone (`outcome` proves it): completes the termination
    /// hook if a terminating drain ran, and waits, within a bound, for the work to end.
    pub async fn finish(self, outcome: Outcome) {
        let _ = self.finish.send(outcome);
        let mut task = self.task;
        if tokio::time::timeout(FINISH_WITHIN, &mut task)
            .await
            .is_err()
        {
            task.abort();
            tracing::error!("lifecycle: gave up waiting for the hook completion");
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

fn set_hook(hub: &Hub, terminate: bool, f: impl FnOnce(&mut HookStatus)) {
    let mut status = hub.lifecycle();
    let slot = if terminate {
        &mut status.terminate
    } else {
        &mut status.launch
    };
    if let Some(h) = slot.as_mut() {
        f(h);
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
    hub: Arc<Hub>,
    mut finish: oneshot::Receiver<Outcome>,
) {
    {
        let mut status = hub.lifecycle();
        status.terminate = hook_status(&settings.terminate_hook);
        status.launch = hook_status(&settings.launch_hook);
    }
    let setup = tokio::select! {
        setup = Api::setup(&settings, &aws, &hub) => setup,
        done = &mut finish => {
            // The agent ended before the identity was known: one more try, bounded.
            let setup = tokio::time::timeout(LATE_SETUP_WITHIN, Api::setup(&settings, &aws, &hub)).await;
            match (setup, done) {
                (Ok(Ok(api)), Ok(outcome)) => {
                    // An agent that never got ready (a fast crash loop, say) abandons the launch.
                    let never_ready = hub.report().ready_source.is_none();
                    let api = Arc::new(api);
                    if settings.launch_hook.is_some() && never_ready {
                        let launch = api.clone().spawn_launch(&settings, &hub, HookResult::Abandon, "the agent exited before it was ready");
                        let _ = tokio::time::timeout(LATE_SETUP_WITHIN, launch).await;
                    }
                    let terminating = hub.stats().drains.iter().any(|(reason, n)| *n > 0 && reason.ends_instance());
                    api.finish_termination(&settings, &hub, terminating, outcome).await;
                }
                _ => tracing::error!("lifecycle: the agent exited before the group and instance were known; no hook completed"),
            }
            return;
        }
    };
    let api = match setup {
        Ok(api) => api,
        Err(err) => {
            let record = Record::HooksOff {
                error: err.to_string(),
            };
            tracing::error!(error = %err, journal = %record.json(), "lifecycle hooks are off");
            hub.lifecycle().error = Some(err.to_string());
            let _ = finish.await;
            return;
        }
    };
    Watch::new(Arc::new(api), &settings, &hub).run(finish).await;
}

/// The shared context plus what the hooks add: the heartbeat cadence and retry bound.
struct Api {
    aws: Arc<AwsContext>,
    heartbeat_interval: Duration,
    /// The hook's heartbeat timeout, bounding retries.
    hook_timeout: Option<Duration>,
}

impl Api {
    /// The shared AWS context, then the heartbeat interval (flag, a third of the hook's
    /// HeartbeatTimeout, else 60 s).
    async fn setup(
        settings: &LifecycleSettings,
        aws: &SharedAws,
        hub: &Hub,
    ) -> Result<Api, crate::aws::context::ContextError> {
        let aws = aws.get().await?;
        let mut api = Api {
            aws,
            heartbeat_interval: DEFAULT_HEARTBEAT,
            hook_timeout: None,
        };
        if let Some(hook) = &settings.terminate_hook {
            api.hook_timeout = api.hook_heartbeat_timeout(hook, hub).await;
        }
        api.heartbeat_interval = settings
            .heartbeat_interval
            // A third of the timeout leaves two missed heartbeats of slack; never more than that.
            .or(api
                .hook_timeout
                .map(|t| (t / 3).max(Duration::from_millis(100))))
            .unwrap_or(DEFAULT_HEARTBEAT);
        hub.lifecycle().heartbeat_interval = Some(api.heartbeat_interval);
        let record = Record::HooksReady {
            group: api.aws.group.clone(),
            instance_id: api.aws.instance_id.clone(),
        };
        tracing::info!(
            group = %api.aws.group,
            instance = %api.aws.instance_id,
            region = %api.aws.region,
            heartbeat_every = %format_duration(api.heartbeat_interval),
            journal = %record.json(),
            "lifecycle hooks ready"
        );
        Ok(api)
    }

    async fn hook_heartbeat_timeout(&self, hook: &str, hub: &Hub) -> Option<Duration> {
        let answer = self
            .aws
            .client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(&self.aws.group)
            .lifecycle_hook_names(hook)
            .send()
            .await
            .map_err(|e| CallError::from(&e));
        record_result(hub, "DescribeLifecycleHooks", &answer);
        match answer {
            Ok(out) => {
                let found = out
                    .lifecycle_hooks()
                    .iter()
                    .find(|h| h.lifecycle_hook_name() == Some(hook))
                    .and_then(|h| h.heartbeat_timeout());
                if found.is_none() {
                    tracing::warn!(hook, group = %self.aws.group, "lifecycle: the group has no such hook (yet); heartbeats every 60s");
                }
                found.map(|secs| Duration::from_secs(secs.max(1).unsigned_abs().into()))
            }
            Err(CallError::Denied(_)) => {
                tracing::warn!(
                    "lifecycle: cannot read the hook's heartbeat timeout: the instance profile lacks autoscaling:DescribeLifecycleHooks; heartbeats every 60s"
                );
                None
            }
            Err(other) => {
                tracing::warn!(error = %other.text(), "lifecycle: cannot read the hook's heartbeat timeout; heartbeats every 60s");
                None
            }
        }
    }

    fn spawn_launch(
        self: Arc<Self>,
        settings: &LifecycleSettings,
        hub: &Arc<Hub>,
        result: HookResult,
        why: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let hook = settings.launch_hook.clone().unwrap_or_default();
        let hub = hub.clone();
        tokio::spawn(async move {
            tracing::info!(hook = %hook, result = result.as_str(), "lifecycle: completing the launch hook: {why}");
            let outcome = self.complete(&hub, &hook, result, false).await;
            set_hook(&hub, false, |h| {
                h.state = outcome;
                h.result = Some(result);
            });
        })
    }

    async fn heartbeat(&self, settings: &LifecycleSettings, hub: &Hub) {
        let Some(hook) = &settings.terminate_hook else {
            return;
        };
        let answer = self
            .aws
            .client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&self.aws.group)
            .lifecycle_hook_name(hook)
            .instance_id(&self.aws.instance_id)
            .send()
            .await
            .map_err(|e| CallError::from(&e));
        record_result(hub, "RecordLifecycleActionHeartbeat", &answer);
        match answer {
            Ok(_) => {
                set_hook(hub, true, |h| h.heartbeats += 1);
                tracing::debug!(hook = %hook, "lifecycle: heartbeat sent");
            }
            Err(failure) => {
                let text = match &failure {
                    CallError::Denied(_) => {
                        "the instance profile lacks autoscaling:RecordLifecycleActionHeartbeat"
                            .to_string()
                    }
                    other => other.text().to_string(),
                };
                tracing::warn!(hook = %hook, error = %text, "lifecycle: heartbeat failed (will try again)");
                set_hook(hub, true, |h| h.last_error = Some(text));
            }
        }
    }

    async fn finish_termination(
        &self,
        settings: &LifecycleSettings,
        hub: &Hub,
        terminating: bool,
        outcome: Outcome,
    ) {
        let Some(hook) = &settings.terminate_hook else {
            return;
        };
        if !terminating {
            return;
        }
        let exit = &outcome.exit;
        let result = result_for(
            exit,
            settings.stop_signal,
            outcome.sigkilled,
            settings.on_unclean_exit,
        );
        tracing::info!(hook = %hook, result = result.as_str(), agent = %exit, "lifecycle: the agent and its group are gone; completing the termination hook");
        set_hook(hub, true, |h| h.state = HookState::Completing);
        let quiet = hub
            .stats()
            .drains
            .iter()
            .all(|(reason, n)| *n == 0 || *reason == DrainReason::SpotInterruption);
        let state = self.complete(hub, hook, result, quiet).await;
        set_hook(hub, true, |h| {
            h.state = state;
            h.result = Some(result);
        });
    }

    /// `CompleteLifecycleAction` with retries; returns the final state for `/status`.
    /// `quiet`: "no active action" is expected (a spot interruption the group did not hold).
    async fn complete(&self, hub: &Hub, hook: &str, result: HookResult, quiet: bool) -> HookState {
        let started = Instant::now();
        let retry_window = self
            .hook_timeout
            .unwrap_or(MAX_RETRY_WINDOW)
            .min(MAX_RETRY_WINDOW);
        let no_action_window =
            (self.heartbeat_interval * 3).clamp(NO_ACTION_WINDOW.0, NO_ACTION_WINDOW.1);
        let mut delay = Duration::from_millis(200);
        let mut attempt: u32 = 0;
        let state = loop {
            attempt += 1;
            let failure = match self.complete_once(hook, result).await {
                Ok(()) => {
                    record_call(hub, "CompleteLifecycleAction", "ok");
                    tracing::info!(
                        hook,
                        result = result.as_str(),
                        attempt,
                        "lifecycle: hook completed"
                    );
                    break HookState::Completed;
                }
                Err(failure) => failure,
            };
            record_call(hub, "CompleteLifecycleAction", failure.outcome());
            let window = match &failure {
                CallError::Retry(_) => retry_window,
                CallError::NoAction(_) => no_action_window,
                CallError::Denied(_) => {
                    tracing::error!(
                        hook,
                        "lifecycle: the instance profile lacks autoscaling:CompleteLifecycleAction; the hook runs to its timeout"
                    );
                    break HookState::GaveUp;
                }
                CallError::Fatal(text) => {
                    tracing::error!(hook, error = %text, "lifecycle: cannot complete the hook");
                    break HookState::GaveUp;
                }
            };
            let elapsed = started.elapsed();
            if elapsed + delay > window {
                break give_up(hook, &failure, quiet, elapsed);
            }
            tracing::debug!(hook, error = %failure.text(), retry_in = ?delay, "lifecycle: completion failed; retrying");
            tokio::time::sleep(jittered(delay)).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        };
        let record = Record::HookFinished {
            hook: hook.to_string(),
            result,
            state: state.as_str().to_string(),
        };
        tracing::debug!(hook, journal = %record.json(), "lifecycle: hook work ended");
        state
    }

    async fn complete_once(&self, hook: &str, result: HookResult) -> Result<(), CallError> {
        self.aws
            .client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.aws.group)
            .lifecycle_hook_name(hook)
            .instance_id(&self.aws.instance_id)
            .lifecycle_action_result(result.as_str())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| CallError::from(&e))
    }
}

/// The last word on a completion whose retry window ran out.
fn give_up(hook: &str, failure: &CallError, quiet: bool, elapsed: Duration) -> HookState {
    match failure {
        CallError::NoAction(text) => {
            if quiet {
                tracing::info!(
                    hook,
                    "lifecycle: the group holds no lifecycle action for this instance (as expected for a spot interruption); nothing to complete"
                );
            } else {
                tracing::warn!(hook, error = %text, "lifecycle: no active lifecycle action after retrying; nothing to complete");
            }
            HookState::NothingToComplete
        }
        other => {
            tracing::error!(hook, error = %other.text(), after = %format_duration(Duration::from_secs(elapsed.as_secs())), "lifecycle: gave up completing the hook");
            HookState::GaveUp
        }
    }
}

/// The lifecycle work alongside the supervisor: the launch hook on readiness, heartbeats while a
/// terminating drain runs, the termination hook once the agent is gone.
struct Watch<'a> {
    api: Arc<Api>,
    settings: &'a LifecycleSettings,
    hub: &'a Arc<Hub>,
    terminating: bool,
    launch_done: bool,
    heartbeat: Option<Interval>,
    launch_task: Option<tokio::task::JoinHandle<()>>,
    /// The agent was held back in a warm pool (`--in-warm-pool wait`).
    was_held: bool,
}

impl<'a> Watch<'a> {
    fn new(api: Arc<Api>, settings: &'a LifecycleSettings, hub: &'a Arc<Hub>) -> Self {
        Watch {
            api,
            settings,
            hub,
            terminating: false,
            launch_done: settings.launch_hook.is_none(),
            heartbeat: None,
            launch_task: None,
            was_held: false,
        }
    }

    /// Runs until `finish` says the agent is gone.
    async fn run(mut self, mut finish: oneshot::Receiver<Outcome>) {
        let mut phase = self.hub.phase.clone();
        let mut held = self.hub.held_changes();
        if held.borrow_and_update().is_some() {
            self.on_hold(true);
        }
        loop {
            tokio::select! {
                changed = held.changed() => {
                    if changed.is_ok() {
                        let now = held.borrow_and_update().is_some();
                        self.on_hold(now);
                    }
                }
                changed = phase.changed() => {
                    if changed.is_err() {
                        // The supervisor is gone; `finish` follows.
                        let done = (&mut finish).await;
                        self.finish(done.ok()).await;
                        break;
                    }
                    let now = phase.borrow_and_update().clone();
                    self.on_phase(&now);
                }
                _ = async { self.heartbeat.as_mut().expect("guarded by the branch condition").tick().await }, if self.heartbeat.is_some() => {
                    self.api.heartbeat(self.settings, self.hub).await;
                }
                _ = self.hub.extended.notified() => {
                    if self.terminating {
                        tracing::info!("lifecycle: the agent asked for more time; heartbeat now");
                        self.api.heartbeat(self.settings, self.hub).await;
                    }
                }
                _ = self.hub.ready_timed_out.notified(), if !self.launch_done => {
                    self.launch(HookResult::Abandon, "the agent was not ready within --ready-timeout");
                }
                done = &mut finish => {
                    self.finish(done.ok()).await;
                    break;
                }
            }
        }
        if let Some(task) = self.launch_task {
            let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
        }
    }

    fn on_phase(&mut self, now: &Phase) {
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
            let every = self.api.heartbeat_interval;
            let mut tick = tokio::time::interval_at(
                crate::machine::state::later(Instant::now(), every).into(),
                every,
            );
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            self.heartbeat = Some(tick);
            set_hook(self.hub, true, |h| h.state = HookState::Heartbeating);
        }
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
            set_hook(self.hub, false, |h| {
                h.state = HookState::Waiting;
                h.result = None;
            });
            let now = self.hub.phase.borrow().clone();
            self.on_phase(&now);
        }
    }

    fn launch(&mut self, result: HookResult, why: &'static str) {
        self.launch_done = true;
        self.launch_task = Some(self.api.clone().spawn_launch(
            self.settings,
            self.hub,
            result,
            why,
        ));
    }

    async fn finish(&mut self, outcome: Option<Outcome>) {
        // The run ended (the last phase change may not have been seen yet): an agent that never
        // got ready abandons the launch.
        if !self.launch_done {
            self.launch(HookResult::Abandon, "the agent exited before it was ready");
        }
        if let Some(outcome) = outcome {
            // A drain that came between an exit and a restart ended the run with no draining
            // phase to see; its hook waits all the same.
            let terminating =
                self.terminating || outcome.drain.is_some_and(DrainReason::ends_instance);
            self.api
                .finish_termination(self.settings, self.hub, terminating, outcome)
                .await;
        }
    }
}

/// Full jitter between half the delay and the delay, so many instances do not retry in step.
fn jittered(delay: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    delay.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0)
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
        assert_eq!(
            result_for(&ChildExit::for_test(1), term, false, HookResult::Continue),
            HookResult::Continue,
            "--on-unclean-exit continue"
        );
    }
}
