//! The lifecycle hook calls and their retry policy: the hook's timeout read once, heartbeats,
//! `CompleteLifecycleAction` and `DescribeAutoScalingInstances`, each retried through throttling
//! and 5xx with full-jitter backoff, because Auto Scaling's rate limit is shared by every tool in
//! the account and a fleet scaled in at once must not retry in step.

use std::time::{Duration, Instant};

use crate::aws::api::{CallError, record_call, record_result};
use crate::aws::backoff::{self, patiently, through_throttling};
use crate::aws::context::{AwsContext, ContextError, SharedAws};
use crate::aws::status::LifecycleBoard;
use crate::aws::wait_state::{self, Stage};
use crate::config::settings::{HookResult, LifecycleSettings};
use crate::fmt::format_duration;
use crate::journal::Record;
use crate::model::HookState;

use std::sync::Arc;

use tokio::sync::watch;

/// The longest a retryable error (throttling, 5xx, a timeout) is retried.
pub const MAX_RETRY_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Bounds of the window in which "no active lifecycle action" is retried when the group shows
/// no termination under way.
const NO_ACTION_WINDOW: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(60));
/// The heartbeat interval when the hook's timeout cannot be read.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
/// How long the hook's timeout is read through throttling (a fleet starting at once shares one
/// rate limit) before settling for the default heartbeat interval; nothing waits for it.
const SETUP_RETRY_WINDOW: Duration = Duration::from_secs(120);

/// The shared context plus what the hooks add: the heartbeat cadence and retry bounds.
///
/// Completing and heartbeating need only the group, the instance and the hook's name; the
/// hook's heartbeat timeout only sets the cadence and the retry bounds. So it is read in the
/// background ([`HookApi::learn_hook_timeout`]) and the defaults serve until it is known: a
/// `DescribeLifecycleHooks` throttled for minutes at start (a fleet scaling out together is
/// throttled exactly then) must never hold up a completion.
pub struct HookApi {
    pub aws: Arc<AwsContext>,
    /// `--heartbeat-interval`, which wins over a third of the hook's timeout.
    flag_interval: Option<Duration>,
    /// The hook's heartbeat timeout once read, bounding retries and the wait for the wait state;
    /// a watch so that a drain already under way picks up the cadence it implies.
    hook_timeout: watch::Sender<Option<Duration>>,
}

impl HookApi {
    /// The shared AWS context (the group and the instance id) is all the hooks wait for; the
    /// heartbeat cadence starts at `--heartbeat-interval`, else 60 s, until the hook's timeout
    /// is read.
    pub async fn setup(
        settings: &LifecycleSettings,
        aws: &SharedAws,
        board: &LifecycleBoard,
    ) -> Result<HookApi, ContextError> {
        let aws = aws.get().await?;
        let api = HookApi {
            aws,
            flag_interval: settings.heartbeat_interval,
            hook_timeout: watch::Sender::new(None),
        };
        board.update(|l| l.heartbeat_interval = Some(api.heartbeat_interval()));
        let record = Record::HooksReady {
            group: api.aws.group.clone(),
            instance_id: api.aws.instance_id.clone(),
        };
        tracing::info!(
            group = %api.aws.group,
            instance = %api.aws.instance_id,
            region = %api.aws.region,
            heartbeat_every = %format_duration(api.heartbeat_interval()),
            journal = %record.json(),
            "lifecycle hooks ready"
        );
        Ok(api)
    }

    /// The heartbeat cadence: the flag, else a third of the hook's timeout (two missed
    /// heartbeats of slack, never more), else 60 s.
    pub fn heartbeat_interval(&self) -> Duration {
        self.flag_interval
            .or(self
                .hook_timeout()
                .map(|t| (t / 3).max(Duration::from_millis(100))))
            .unwrap_or(DEFAULT_HEARTBEAT)
    }

    /// The hook's heartbeat timeout, once read.
    pub fn hook_timeout(&self) -> Option<Duration> {
        *self.hook_timeout.borrow()
    }

    /// Hears when the hook's timeout becomes known (and with it, perhaps, a new cadence).
    pub fn hook_timeout_changes(&self) -> watch::Receiver<Option<Duration>> {
        self.hook_timeout.subscribe()
    }

    /// Reads the hook's heartbeat timeout (`DescribeLifecycleHooks`), in the background: the
    /// cadence and bounds it sets take effect when it comes, and nothing waits for it.
    pub async fn learn_hook_timeout(&self, hook: &str, board: &LifecycleBoard) {
        let Some(timeout) = self.hook_heartbeat_timeout(hook, board).await else {
            return;
        };
        self.hook_timeout.send_replace(Some(timeout));
        let every = self.heartbeat_interval();
        board.update(|l| l.heartbeat_interval = Some(every));
        tracing::info!(hook, timeout = %format_duration(timeout), heartbeat_every = %format_duration(every), "lifecycle: read the hook's heartbeat timeout");
    }

    /// `DescribeLifecycleHooks`, once, through throttling (patiently: nothing waits for it).
    async fn hook_heartbeat_timeout(&self, hook: &str, board: &LifecycleBoard) -> Option<Duration> {
        let answer = patiently(SETUP_RETRY_WINDOW, || async {
            let answer = self
                .aws
                .client
                .describe_lifecycle_hooks()
                .auto_scaling_group_name(&self.aws.group)
                .lifecycle_hook_names(hook)
                .send()
                .await
                .map_err(|e| CallError::from(&e));
            record_result(board, "DescribeLifecycleHooks", &answer);
            answer
        })
        .await;
        let fallback = format_duration(self.heartbeat_interval());
        match answer {
            Ok(out) => {
                let found = out
                    .lifecycle_hooks()
                    .iter()
                    .find(|h| h.lifecycle_hook_name() == Some(hook))
                    .and_then(|h| h.heartbeat_timeout());
                if found.is_none() {
                    tracing::warn!(hook, group = %self.aws.group, "lifecycle: the group has no such hook (yet); heartbeats every {fallback}");
                }
                found.map(|secs| Duration::from_secs(secs.max(1).unsigned_abs().into()))
            }
            Err(CallError::Denied(_)) => {
                tracing::warn!(
                    "lifecycle: cannot read the hook's heartbeat timeout: the instance profile lacks autoscaling:DescribeLifecycleHooks; heartbeats every {fallback}"
                );
                None
            }
            Err(other) => {
                tracing::warn!(error = %other.text(), "lifecycle: cannot read the hook's heartbeat timeout; heartbeats every {fallback}");
                None
            }
        }
    }

    /// How long throttling and 5xx are retried: the hook's timeout, at most ten minutes.
    pub fn retry_window(&self) -> Duration {
        self.hook_timeout()
            .unwrap_or(MAX_RETRY_WINDOW)
            .min(MAX_RETRY_WINDOW)
    }

    /// How long "no active lifecycle action" is retried when nothing says the wait state is
    /// still to come: three heartbeat intervals, 2 to 60 s.
    pub fn no_action_window(&self) -> Duration {
        (self.heartbeat_interval() * 3).clamp(NO_ACTION_WINDOW.0, NO_ACTION_WINDOW.1)
    }

    /// `RecordLifecycleActionHeartbeat`, once; the outcome is counted, shown and logged.
    /// `expected`: "no active action" is expected here (the wait state may not have begun), so
    /// it is not worth a warning.
    pub async fn heartbeat(&self, hook: &str, board: &LifecycleBoard, expected: bool) {
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
        record_result(board, "RecordLifecycleActionHeartbeat", &answer);
        match answer {
            Ok(_) => {
                set_terminate(board, |h| h.heartbeats += 1);
                tracing::debug!(hook = %hook, "lifecycle: heartbeat sent");
            }
            Err(CallError::NoAction(_)) if expected => {
                tracing::debug!(hook = %hook, "lifecycle: no active lifecycle action to heartbeat yet");
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
                set_terminate(board, |h| h.last_error = Some(text));
            }
        }
    }

    /// `CompleteLifecycleAction`, retried through throttling and 5xx within the retry window;
    /// any other answer is returned as it is.
    pub async fn complete_once(
        &self,
        board: &LifecycleBoard,
        hook: &str,
        result: HookResult,
    ) -> Result<(), CallError> {
        through_throttling(self.retry_window(), || {
            self.complete_call(board, hook, result)
        })
        .await
    }

    /// `CompleteLifecycleAction` as a probe of the wait state: one paced attempt, not retried
    /// when throttled (the next probe on the schedule is its retry).
    pub async fn complete_probe(
        &self,
        board: &LifecycleBoard,
        hook: &str,
        result: HookResult,
    ) -> Result<(), CallError> {
        backoff::once(self.complete_call(board, hook, result)).await
    }

    async fn complete_call(
        &self,
        board: &LifecycleBoard,
        hook: &str,
        result: HookResult,
    ) -> Result<(), CallError> {
        let answer = self
            .aws
            .client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.aws.group)
            .lifecycle_hook_name(hook)
            .instance_id(&self.aws.instance_id)
            .lifecycle_action_result(result.as_str())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| CallError::from(&e));
        record_call(
            board,
            "CompleteLifecycleAction",
            answer.as_ref().map_or_else(CallError::outcome, |_| "ok"),
        );
        answer
    }

    /// Where the instance stands (`DescribeAutoScalingInstances`), through throttling.
    pub async fn look(&self, board: &LifecycleBoard) -> Result<Stage, CallError> {
        through_throttling(self.retry_window(), || wait_state::look(&self.aws, board)).await
    }

    /// `CompleteLifecycleAction` with "no active action" retried for a short window: the launch
    /// hook, and the termination hook of a spot interruption (which the group may not hold at
    /// all; `quiet` then). Returns the final state for `/status`.
    pub async fn complete(
        &self,
        board: &LifecycleBoard,
        hook: &str,
        result: HookResult,
        quiet: bool,
    ) -> HookState {
        let started = Instant::now();
        let window = self.no_action_window();
        let mut delay = Duration::from_millis(200);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let failure = match self.complete_once(board, hook, result).await {
                Ok(()) => {
                    tracing::info!(
                        hook,
                        result = result.as_str(),
                        attempt,
                        "lifecycle: hook completed"
                    );
                    return HookState::Completed;
                }
                Err(failure) => failure,
            };
            if !matches!(failure, CallError::NoAction(_)) {
                return refused(hook, &failure, started.elapsed());
            }
            let elapsed = started.elapsed();
            if elapsed.saturating_add(delay) > window {
                return no_action(hook, &failure, quiet);
            }
            tracing::debug!(hook, error = %failure.text(), retry_in = %format_duration(delay), "lifecycle: completion failed; retrying");
            tokio::time::sleep(backoff::within(delay)).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

/// Updates the termination hook's status, if it has one.
pub fn set_terminate(board: &LifecycleBoard, f: impl FnOnce(&mut crate::model::hooks::HookStatus)) {
    board.terminate(f);
}

/// The last word on a completion refused for a reason other than "no active action".
pub fn refused(hook: &str, failure: &CallError, elapsed: Duration) -> HookState {
    match failure {
        CallError::Denied(_) => tracing::error!(
            hook,
            "lifecycle: the instance profile lacks autoscaling:CompleteLifecycleAction; the hook runs to its timeout"
        ),
        CallError::Fatal(text) => {
            tracing::error!(hook, error = %text, "lifecycle: cannot complete the hook")
        }
        other => tracing::error!(
            hook,
            error = %other.text(),
            after = %format_duration(Duration::from_secs(elapsed.as_secs())),
            "lifecycle: gave up completing the hook"
        ),
    }
    HookState::GaveUp
}

/// The last word when the group holds no lifecycle action for this instance.
pub fn no_action(hook: &str, failure: &CallError, quiet: bool) -> HookState {
    if quiet {
        tracing::info!(
            hook,
            "lifecycle: the group holds no lifecycle action for this instance (as expected for a spot interruption); nothing to complete"
        );
    } else {
        tracing::warn!(hook, error = %failure.text(), "lifecycle: no active lifecycle action after retrying; nothing to complete");
    }
    HookState::NothingToComplete
}
