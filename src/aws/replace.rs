//! `--on-crash-loop unhealthy`: once the restarts have ended in a crash loop and the agent is
//! gone, the instance is marked Unhealthy, once, so that the group replaces it instead of keeping
//! an instance that is healthy as far as EC2 knows and does nothing. Outside a group, or when the
//! group refuses, one line says so and the guard exits all the same.

use std::time::Duration;

use crate::aws::api::CallError;
use crate::aws::context::SharedAws;
use crate::aws::health_status::mark_unhealthy;
use crate::journal::Record;

/// The most tries of `SetInstanceHealth` when it fails in a way worth retrying (throttling,
/// 5xx, timeouts); the first success ends it, so the instance is marked once.
const TRIES: u32 = 3;
/// The pause after the first failed try; doubled after each.
const FIRST_PAUSE: Duration = Duration::from_secs(1);

/// Asks the group to replace this instance; `true` once it is marked Unhealthy. `aws` is `None`
/// when the guard cannot know its group (`--imds off`).
pub async fn after_crash_loop(aws: Option<&SharedAws>) -> bool {
    let Some(aws) = aws else {
        return not_marked("no Auto Scaling group is known with --imds off".to_string());
    };
    let ctx = match aws.get().await {
        Ok(ctx) => ctx,
        Err(err) => return not_marked(format!("outside a group: {err}")),
    };
    let mut pause = FIRST_PAUSE;
    for attempt in 1..=TRIES {
        match mark_unhealthy(&ctx, aws.board()).await {
            Ok(()) => {
                let record = Record::MarkedUnhealthy {
                    group: ctx.group.clone(),
                    instance_id: ctx.instance_id.clone(),
                };
                tracing::warn!(
                    group = %ctx.group,
                    instance = %ctx.instance_id,
                    journal = %record.json(),
                    "crash loop: marked the instance Unhealthy; the group will replace it"
                );
                return true;
            }
            Err(CallError::Retry(text)) if attempt < TRIES => {
                tracing::debug!(error = %text, attempt, "SetInstanceHealth failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(CallError::Denied(_)) => {
                return not_marked(
                    "the instance profile lacks autoscaling:SetInstanceHealth".to_string(),
                );
            }
            Err(other) => return not_marked(format!("SetInstanceHealth: {}", other.text())),
        }
    }
    false
}

fn not_marked(why: String) -> bool {
    let record = Record::NotMarkedUnhealthy { error: why.clone() };
    tracing::error!(journal = %record.json(), "crash loop: cannot mark the instance Unhealthy ({why}); exiting");
    false
}
