//! How a call to the Auto Scaling API failed, as the retry policy and the operator need to know
//! it, and the per-call counters that `/metrics` shows.

use aws_sdk_autoscaling::error::{ProvideErrorMetadata, SdkError};

use crate::aws::status::LifecycleBoard;

/// A failed Auto Scaling call, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Throttling, 5xx, timeouts, connection trouble: try again later.
    #[error("{0}")]
    Retry(String),
    /// No lifecycle action waits for this instance and hook (yet, or any more).
    #[error("{0}")]
    NoAction(String),
    /// The instance profile lacks the permission.
    #[error("{0} (is the IAM permission missing?)")]
    Denied(String),
    /// Anything else: not worth retrying.
    #[error("{0}")]
    Fatal(String),
}

impl CallError {
    /// The outcome label in `agent_guard_lifecycle_calls_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::Retry(_) => "retryable-error",
            CallError::NoAction(_) => "no-active-action",
            CallError::Denied(_) => "access-denied",
            CallError::Fatal(_) => "error",
        }
    }

    /// The service's own words, without advice.
    pub fn text(&self) -> &str {
        match self {
            CallError::Retry(t)
            | CallError::NoAction(t)
            | CallError::Denied(t)
            | CallError::Fatal(t) => t,
        }
    }
}

impl<E, R> From<&SdkError<E, R>> for CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    fn from(err: &SdkError<E, R>) -> CallError {
        let message = err.message().unwrap_or_default().to_string();
        match err {
            SdkError::TimeoutError(_) => CallError::Retry("timed out".to_string()),
            SdkError::DispatchFailure(e) => {
                CallError::Retry(format!("cannot reach the Auto Scaling API: {e:?}"))
            }
            SdkError::ResponseError(_) => CallError::Retry("unreadable response".to_string()),
            SdkError::ServiceError(_) => {
                let code = err.code().unwrap_or_default();
                let text = format!("{code}: {message}");
                match code {
                    "ValidationError" if message.contains("No active Lifecycle Action") => {
                        CallError::NoAction(text)
                    }
                    "Throttling"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "ResourceContention"
                    | "InternalFailure"
                    | "ServiceUnavailable" => CallError::Retry(text),
                    "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
                        CallError::Denied(text)
                    }
                    _ => CallError::Fatal(text),
                }
            }
            _ => CallError::Fatal(format!("{err}")),
        }
    }
}

/// Counts a call for `/metrics`: `agent_guard_lifecycle_calls_total{action, outcome}`.
pub fn record_call(board: &LifecycleBoard, action: &'static str, outcome: &'static str) {
    board.update(|l| *l.calls.entry((action, outcome)).or_insert(0) += 1);
}

/// Counts a call's result, ok or classified.
pub fn record_result<T>(
    board: &LifecycleBoard,
    action: &'static str,
    result: &Result<T, CallError>,
) {
    record_call(
        board,
        action,
        result.as_ref().map_or_else(CallError::outcome, |_| "ok"),
    );
}
