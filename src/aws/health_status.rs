//! `SetInstanceHealth`: marks this instance Unhealthy, so that its group replaces it through the
//! normal termination (lifecycle hooks included).

use crate::aws::api::{CallError, record_result};
use crate::aws::context::AwsContext;
use crate::aws::status::LifecycleBoard;

/// Marks the instance Unhealthy at once (`ShouldRespectGracePeriod=false`: the instance has
/// already shown it cannot do its work). One call; the caller decides about retries.
pub async fn mark_unhealthy(ctx: &AwsContext, board: &LifecycleBoard) -> Result<(), CallError> {
    let answer = ctx
        .client
        .set_instance_health()
        .instance_id(&ctx.instance_id)
        .health_status("Unhealthy")
        .should_respect_grace_period(false)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| CallError::from(&e));
    record_result(board, "SetInstanceHealth", &answer);
    answer
}
