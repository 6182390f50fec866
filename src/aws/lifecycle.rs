//! Auto Scaling lifecycle actions: heartbeats while the agent drains, the termination hook
//! completed only after the agent and its whole process group are gone, and the launch hook
//! completed once the agent is ready.
//!
//! The invariant the product exists for — never complete the termination hook while the agent
//! runs — is a type: [`LifecycleHandle::finish`] takes the [`ChildExit`] that only the reaper
//! can make, and the supervisor hands it over only once the agent's group is empty. This does
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

use aws_sdk_autoscaling::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::oneshot;

use crate::agent::hub::{HookState, HookStatus, Hub, LifecycleStatus};
use crate::aws::imds::ImdsClient;
use crate::config::settings::{HookResult, LifecycleSettings};
use crate::fmt::format_duration;
use crate::machine::state::{DrainReason, Phase};
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

/// The same judgement from an exit status alone (0, or 128 + the stop signal, is clean), for
/// `drill`, which sees the guard's status; whether SIGKILL came is judged separately.
pub fn result_for_code(status: u8, stop_signal: Sig) -> HookResult {
    if status == 0 || i32::from(status) == 128 + stop_signal.raw() {
        HookResult::Continue
    } else {
        HookResult::Abandon
    }
}

/// How a call failed, for the retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// Throttling, 5xx, timeouts, connection trouble: try again later.
    Retry(String),
    /// No lifecycle action waits for this instance and hook (yet, or any more).
    NoAction(String),
    /// The instance profile lacks the permission.
    Denied(String),
    /// Anything else: not worth retrying.
    Fatal(String),
}

impl Failure {
    fn outcome(&self) -> &'static str {
        match self {
            Failure::Retry(_) => "retryable-error",
            Failure::NoAction(_) => "no-active-action",
            Failure::Denied(_) => "access-denied",
            Failure::Fatal(_) => "error",
        }
    }

    fn text(&self) -> &str {
        match self {
            Failure::Retry(t) | Failure::NoAction(t) | Failure::Denied(t) | Failure::Fatal(t) => t,
        }
    }
}

fn classify<E, R>(err: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = err.message().unwrap_or_default().to_string();
    match err {
        SdkError::TimeoutError(_) => Failure::Retry("timed out".to_string()),
        SdkError::DispatchFailure(e) => {
            Failure::Retry(format!("cannot reach the Auto Scaling API: {e:?}"))
        }
        SdkError::ResponseError(_) => Failure::Retry("unreadable response".to_string()),
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or_default();
            let text = format!("{code}: {message}");
            match code {
                "ValidationError" if message.contains("No active Lifecycle Action") => {
                    Failure::NoAction(text)
                }
                "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "ResourceContention"
                | "InternalFailure"
                | "ServiceUnavailable" => Failure::Retry(text),
                "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
                    Failure::Denied(text)
                }
                _ => Failure::Fatal(text),
            }
        }
        _ => Failure::Fatal(format!("{err}")),
    }
}

/// The identity the calls are made for.
#[derive(Debug, Clone)]
struct Target {
    group: String,
    instance_id: String,
}

/// The running lifecycle work; `finish` ends it once the agent is gone.
pub struct LifecycleHandle {
    finish: oneshot::Sender<(ChildExit, bool)>,
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
/// How long setup waits for IMDS to give the instance id and region.
const IDENTITY_WITHIN: Duration = Duration::from_secs(30);

impl LifecycleHandle {
    /// Starts the lifecycle work for this run.
    pub fn start(settings: LifecycleSettings, hub: Arc<Hub>) -> LifecycleHandle {
        let (finish, finish_rx) = oneshot::channel();
        let task = tokio::spawn(run(settings, hub, finish_rx));
        LifecycleHandle { finish, task }
    }

    /// The agent and its whole group are gone (`exit` proves it): completes the termination hook
    /// if a terminating drain ran, and waits, within a bound, for the work to end.
    pub async fn finish(self, exit: ChildExit, sigkilled: bool) {
        let _ = self.finish.send((exit, sigkilled));
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

fn status<R>(hub: &Hub, f: impl FnOnce(&mut LifecycleStatus) -> R) -> R {
    f(&mut hub.lifecycle())
}

fn count(hub: &Hub, action: &'static str, outcome: &'static str) {
    status(hub, |s| *s.calls.entry((action, outcome)).or_insert(0) += 1);
}

async fn run(
    settings: LifecycleSettings,
    hub: Arc<Hub>,
    mut finish: oneshot::Receiver<(ChildExit, bool)>,
) {
    status(&hub, |s| {
        s.terminate = settings.terminate_hook.as_ref().map(|name| HookStatus {
            name: name.clone(),
            state: HookState::Waiting,
            ..HookStatus::default()
        });
        s.launch = settings.launch_hook.as_ref().map(|name| HookStatus {
            name: name.clone(),
            state: HookState::Waiting,
            ..HookStatus::default()
        });
    });
    let setup = tokio::select! {
        setup = Api::setup(&settings, &hub) => setup,
        done = &mut finish => {
            // The agent ended before the identity was known: one more try, bounded.
            let setup = tokio::time::timeout(Duration::from_secs(20), Api::setup(&settings, &hub)).await;
            match (setup, done) {
                (Ok(Ok(api)), Ok((exit, killed))) => {
                    api.finish_without_watch(&settings, &hub, exit, killed).await;
                }
                _ => tracing::error!("lifecycle: the agent exited before the group and instance were known; no hook completed"),
            }
            return;
        }
    };
    let api = match setup {
        Ok(api) => api,
        Err(err) => {
            tracing::error!(error = %err, "lifecycle hooks are off");
            status(&hub, |s| s.error = Some(err));
            let _ = finish.await;
            return;
        }
    };
    api.watch(&settings, &hub, finish).await;
}

/// The Auto Scaling client and the group and instance it acts on, for the other parts that
/// call the Auto Scaling API (scale-in protection).
pub struct AwsContext {
    pub client: aws_sdk_autoscaling::Client,
    pub group: String,
    pub instance_id: String,
}

/// Connects as the lifecycle work does (same region, credentials and group discovery), without
/// reading the hook.
pub async fn connect(settings: &LifecycleSettings, hub: &Hub) -> Result<AwsContext, String> {
    let api = Api::setup_with(settings, hub, false).await?;
    Ok(AwsContext {
        client: api.client,
        group: api.target.group,
        instance_id: api.target.instance_id,
    })
}

/// Whether a failed call is worth trying again later (throttling, 5xx, timeouts), and its text.
pub fn retryable<E, R>(err: &SdkError<E, R>) -> (bool, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let failure = classify(err);
    let text = match &failure {
        Failure::Denied(t) => format!("{t} (is the IAM permission missing?)"),
        other => other.text().to_string(),
    };
    (matches!(failure, Failure::Retry(_)), text)
}

/// Counts a call for `/metrics`.
pub fn record_call(hub: &Hub, action: &'static str, outcome: &'static str) {
    count(hub, action, outcome);
}

/// The Auto Scaling client and what it acts on.
struct Api {
    client: aws_sdk_autoscaling::Client,
    target: Target,
    heartbeat_interval: Duration,
    /// The hook's heartbeat timeout, bounding retries.
    hook_timeout: Option<Duration>,
}

impl Api {
    /// Builds the client (region from AWS_REGION, AWS_DEFAULT_REGION or IMDS), and finds the
    /// instance id (IMDS), the group (flag, IMDS tag, DescribeAutoScalingInstances) and the
    /// heartbeat interval (flag, a third of the hook's timeout, else 60 s).
    async fn setup(settings: &LifecycleSettings, hub: &Hub) -> Result<Api, String> {
        Self::setup_with(settings, hub, true).await
    }

    /// `setup`, reading the hook's heartbeat timeout only when `read_hook`.
    async fn setup_with(
        settings: &LifecycleSettings,
        hub: &Hub,
        read_hook: bool,
    ) -> Result<Api, String> {
        let mut imds = hub.imds.clone();
        // The watch guard is dropped inside the future: it must not live across an await.
        let identity = tokio::time::timeout(IDENTITY_WITHIN, async {
            imds.wait_for(|s| s.instance_id.is_some())
                .await
                .map(|s| (s.instance_id.clone().unwrap_or_default(), s.region.clone()))
        })
        .await;
        let (instance_id, imds_region) = match identity {
            Ok(Ok(identity)) => identity,
            _ => return Err("the instance id did not come from IMDS within 30s".to_string()),
        };
        let region = std::env::var("AWS_REGION")
            .ok()
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .or(imds_region)
            .ok_or("no AWS region: set AWS_REGION or let IMDS give placement/region")?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(10))
            .build();
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .region(aws_config::Region::new(region.clone()))
            // Retries are this module's own, so their window and logging follow the hook.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(timeouts)
            .load()
            .await;
        let client = aws_sdk_autoscaling::Client::new(&config);
        let group = match &settings.asg_name {
            Some(name) => name.clone(),
            None => discover_group(&client, &settings.imds_endpoint, &instance_id, hub).await?,
        };
        status(hub, |s| {
            s.group = Some(group.clone());
            s.instance_id = Some(instance_id.clone());
        });
        let mut api = Api {
            client,
            target: Target { group, instance_id },
            heartbeat_interval: DEFAULT_HEARTBEAT,
            hook_timeout: None,
        };
        if let (Some(hook), true) = (&settings.terminate_hook, read_hook) {
            api.hook_timeout = api.hook_heartbeat_timeout(hook, hub).await;
        }
        api.heartbeat_interval = settings
            .heartbeat_interval
            // A third of the timeout leaves two missed heartbeats of slack; never more than that.
            .or(api
                .hook_timeout
                .map(|t| (t / 3).max(Duration::from_millis(100))))
            .unwrap_or(DEFAULT_HEARTBEAT);
        status(hub, |s| s.heartbeat_interval = Some(api.heartbeat_interval));
        tracing::info!(
            group = %api.target.group,
            instance = %api.target.instance_id,
            region = %region,
            heartbeat_every = %format_duration(api.heartbeat_interval),
            "lifecycle hooks ready"
        );
        Ok(api)
    }

    async fn hook_heartbeat_timeout(&self, hook: &str, hub: &Hub) -> Option<Duration> {
        let answer = self
            .client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(&self.target.group)
            .lifecycle_hook_names(hook)
            .send()
            .await;
        match answer {
            Ok(out) => {
                count(hub, "DescribeLifecycleHooks", "ok");
                let found = out
                    .lifecycle_hooks()
                    .iter()
                    .find(|h| h.lifecycle_hook_name() == Some(hook))
                    .and_then(|h| h.heartbeat_timeout());
                if found.is_none() {
                    tracing::warn!(hook, group = %self.target.group, "lifecycle: the group has no such hook (yet); heartbeats every 60s");
                }
                found.map(|secs| Duration::from_secs(secs.max(1) as u64))
            }
            Err(err) => {
                let failure = classify(&err);
                count(hub, "DescribeLifecycleHooks", failure.outcome());
                match failure {
                    Failure::Denied(_) => tracing::warn!(
                        "lifecycle: cannot read the hook's heartbeat timeout: the instance profile lacks autoscaling:DescribeLifecycleHooks; heartbeats every 60s"
                    ),
                    other => {
                        tracing::warn!(error = %other.text(), "lifecycle: cannot read the hook's heartbeat timeout; heartbeats every 60s")
                    }
                }
                None
            }
        }
    }

    /// Runs alongside the supervisor until `finish` says the agent is gone.
    async fn watch(
        self,
        settings: &LifecycleSettings,
        hub: &Arc<Hub>,
        mut finish: oneshot::Receiver<(ChildExit, bool)>,
    ) {
        let mut phase = hub.phase.clone();
        let mut terminating = false;
        let mut launch_done = settings.launch_hook.is_none();
        let mut heartbeat: Option<tokio::time::Interval> = None;
        let api = Arc::new(self);
        let mut launch_task: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tokio::select! {
                changed = phase.changed() => {
                    if changed.is_err() {
                        // The supervisor is gone; `finish` follows.
                        let done = (&mut finish).await;
                        if let Ok((exit, killed)) = done {
                            api.finish_termination(settings, hub, terminating, exit, killed).await;
                        }
                        break;
                    }
                    let now = phase.borrow_and_update().clone();
                    if !launch_done && matches!(now, Phase::Ready) {
                        launch_done = true;
                        launch_task = Some(api.clone().spawn_launch(settings, hub, HookResult::Continue, "the agent is ready"));
                    }
                    if !launch_done && !now.agent_running() {
                        launch_done = true;
                        launch_task = Some(api.clone().spawn_launch(settings, hub, HookResult::Abandon, "the agent exited before it was ready"));
                    }
                    if let Phase::Draining { reason, .. } | Phase::Stopping { reason, .. } = now
                        && !terminating
                        && reason.ends_instance()
                        && settings.terminate_hook.is_some()
                    {
                        terminating = true;
                        let mut tick = tokio::time::interval_at(
                            tokio::time::Instant::now() + api.heartbeat_interval,
                            api.heartbeat_interval,
                        );
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        heartbeat = Some(tick);
                        set_hook(hub, true, |h| h.state = HookState::Heartbeating);
                    }
                }
                _ = async { heartbeat.as_mut().expect("guarded by the branch condition").tick().await }, if heartbeat.is_some() => {
                    api.heartbeat(settings, hub).await;
                }
                _ = hub.extended.notified() => {
                    if terminating {
                        tracing::info!("lifecycle: the agent asked for more time; heartbeat now");
                        api.heartbeat(settings, hub).await;
                    }
                }
                _ = hub.ready_timed_out.notified(), if !launch_done => {
                    launch_done = true;
                    launch_task = Some(api.clone().spawn_launch(settings, hub, HookResult::Abandon, "the agent was not ready within --ready-timeout"));
                }
                done = &mut finish => {
                    if let Ok((exit, killed)) = done {
                        api.finish_termination(settings, hub, terminating, exit, killed).await;
                    }
                    break;
                }
            }
        }
        if let Some(task) = launch_task {
            let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
        }
    }

    /// When the agent ended before `watch` could run (setup was slow).
    async fn finish_without_watch(
        self,
        settings: &LifecycleSettings,
        hub: &Arc<Hub>,
        exit: ChildExit,
        killed: bool,
    ) {
        let terminating = hub
            .stats()
            .drains
            .iter()
            .any(|(reason, n)| *n > 0 && reason.ends_instance());
        self.finish_termination(settings, hub, terminating, exit, killed)
            .await;
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
            .client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&self.target.group)
            .lifecycle_hook_name(hook)
            .instance_id(&self.target.instance_id)
            .send()
            .await;
        match answer {
            Ok(_) => {
                count(hub, "RecordLifecycleActionHeartbeat", "ok");
                set_hook(hub, true, |h| h.heartbeats += 1);
                tracing::debug!(hook = %hook, "lifecycle: heartbeat sent");
            }
            Err(err) => {
                let failure = classify(&err);
                count(hub, "RecordLifecycleActionHeartbeat", failure.outcome());
                let text = match &failure {
                    Failure::Denied(_) => {
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
        exit: ChildExit,
        sigkilled: bool,
    ) {
        let Some(hook) = &settings.terminate_hook else {
            return;
        };
        if !terminating {
            return;
        }
        let result = result_for(
            &exit,
            settings.stop_signal,
            sigkilled,
            settings.on_unclean_exit,
        );
        tracing::info!(hook = %hook, result = result.as_str(), agent = %exit, "lifecycle: the agent and its group are gone; completing the termination hook");
        set_hook(hub, true, |h| h.state = HookState::Completing);
        let quiet = hub
            .stats()
            .drains
            .iter()
            .all(|(reason, n)| *n == 0 || *reason == DrainReason::SpotInterruption);
        let outcome = self.complete(hub, hook, result, quiet).await;
        set_hook(hub, true, |h| {
            h.state = outcome;
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
        loop {
            attempt += 1;
            let answer = self
                .client
                .complete_lifecycle_action()
                .auto_scaling_group_name(&self.target.group)
                .lifecycle_hook_name(hook)
                .instance_id(&self.target.instance_id)
                .lifecycle_action_result(result.as_str())
                .send()
                .await;
            let failure = match answer {
                Ok(_) => {
                    count(hub, "CompleteLifecycleAction", "ok");
                    tracing::info!(
                        hook,
                        result = result.as_str(),
                        attempt,
                        "lifecycle: hook completed"
                    );
                    return HookState::Completed;
                }
                Err(err) => classify(&err),
            };
            count(hub, "CompleteLifecycleAction", failure.outcome());
            let elapsed = started.elapsed();
            let window = match &failure {
                Failure::Retry(_) => retry_window,
                Failure::NoAction(_) => no_action_window,
                Failure::Denied(_) => {
                    tracing::error!(
                        hook,
                        "lifecycle: the instance profile lacks autoscaling:CompleteLifecycleAction; the hook runs to its timeout"
                    );
                    return HookState::GaveUp;
                }
                Failure::Fatal(text) => {
                    tracing::error!(hook, error = %text, "lifecycle: cannot complete the hook");
                    return HookState::GaveUp;
                }
            };
            if elapsed + delay > window {
                return match failure {
                    Failure::NoAction(text) => {
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
                };
            }
            tracing::debug!(hook, error = %failure.text(), retry_in = ?delay, "lifecycle: completion failed; retrying");
            tokio::time::sleep(jittered(delay)).await;
            delay = (delay * 2).min(Duration::from_secs(10));
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

fn set_hook(hub: &Hub, terminate: bool, f: impl FnOnce(&mut HookStatus)) {
    status(hub, |s| {
        let slot = if terminate {
            &mut s.terminate
        } else {
            &mut s.launch
        };
        if let Some(h) = slot.as_mut() {
            f(h);
        }
    });
}

/// The group from the IMDS tag `aws:autoscaling:groupName`, else DescribeAutoScalingInstances.
async fn discover_group(
    client: &aws_sdk_autoscaling::Client,
    imds_endpoint: &str,
    instance_id: &str,
    hub: &Hub,
) -> Result<String, String> {
    if let Ok(imds) = ImdsClient::new(imds_endpoint, Duration::from_secs(1))
        && let Ok(Some(name)) = imds.get("tags/instance/aws:autoscaling:groupName").await
        && !name.trim().is_empty()
    {
        tracing::info!(group = %name.trim(), "lifecycle: group from the instance's metadata tag");
        return Ok(name.trim().to_string());
    }
    let answer = client
        .describe_auto_scaling_instances()
        .instance_ids(instance_id)
        .send()
        .await;
    match answer {
        Ok(out) => {
            count(hub, "DescribeAutoScalingInstances", "ok");
            out.auto_scaling_instances()
                .iter()
                .find(|i| i.instance_id() == Some(instance_id))
                .and_then(|i| i.auto_scaling_group_name())
                .map(|g| {
                    tracing::info!(group = %g, "lifecycle: group from DescribeAutoScalingInstances");
                    g.to_string()
                })
                .ok_or_else(|| format!("instance {instance_id} is in no Auto Scaling group (DescribeAutoScalingInstances)"))
        }
        Err(err) => {
            let failure = classify(&err);
            count(hub, "DescribeAutoScalingInstances", failure.outcome());
            Err(match failure {
                Failure::Denied(_) => "cannot find the group: give --asg-name, enable instance metadata tags, or allow autoscaling:DescribeAutoScalingInstances".to_string(),
                other => format!("cannot find the group: {}", other.text()),
            })
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
        assert_eq!(
            result_for(&ChildExit::for_test(1), term, false, HookResult::Continue),
            HookResult::Continue,
            "--on-unclean-exit continue"
        );
    }
}
