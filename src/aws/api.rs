//! How a call to the Auto Scaling API failed, as the retry policy and the operator need to know
//! it, and the per-call counters that `/metrics` shows.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_autoscaling::error::{ProvideErrorMetadata, SdkError};

use crate::aws::status::LifecycleBoard;
use crate::fmt::{capped, error_chain};

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
    R: std::fmt::Debug + 'static,
{
    fn from(err: &SdkError<E, R>) -> CallError {
        // Before the network: credentials the SDK's chain could not find are no outage to wait
        // out, whatever kind of failure the SDK wraps them in.
        if let Some(missing) = missing_credentials(err) {
            return missing;
        }
        let message = err.message().unwrap_or_default().to_string();
        match err {
            SdkError::TimeoutError(_) => CallError::Retry("timed out".to_string()),
            SdkError::DispatchFailure(_) => CallError::Retry(format!(
                "cannot reach the Auto Scaling API: {}",
                capped(&error_chain(err), CAUSE_MAX)
            )),
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
                    // Credentials that exist but the service refuses: final, and said so.
                    "InvalidClientTokenId"
                    | "UnrecognizedClientException"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "ExpiredTokenException" => CallError::Fatal(format!(
                        "the AWS credentials were refused ({code}); check the instance profile or AWS_* credentials"
                    )),
                    _ => CallError::Fatal(text),
                }
            }
            _ => CallError::Fatal(capped(&error_chain(err), CAUSE_MAX).into_owned()),
        }
    }
}

/// The most of an SDK error's causes a log line carries: the useful part comes first, and the
/// rest is the SDK's internals (a connector's Debug ran to 1.3 KB).
const CAUSE_MAX: usize = 300;

/// "No credentials", final: the SDK's credential chain found none (or was misconfigured). A
/// provider that timed out or failed may answer next time, so those stay retryable.
fn missing_credentials(err: &(dyn std::error::Error + 'static)) -> Option<CallError> {
    let mut cause = err.source();
    while let Some(e) = cause {
        if let Some(creds) = e.downcast_ref::<CredentialsError>() {
            return match creds {
                CredentialsError::CredentialsNotLoaded(_) => Some(CallError::Fatal(
                    "no AWS credentials: none in the environment, the profile files or an instance profile".to_string(),
                )),
                CredentialsError::InvalidConfiguration(_) => Some(CallError::Fatal(format!(
                    "no usable AWS credentials: {}",
                    capped(&error_chain(creds), CAUSE_MAX)
                ))),
                _ => None,
            };
        }
        cause = e.source();
    }
    None
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
