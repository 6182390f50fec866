//! `SetInstanceHealth`: marks this instance Unhealthy so that its group replaces it through its
//! normal termination, lifecycle hooks and all (the guard's own drain included).

use crate::agent::hub::Hub;
use crate::aws::api::{CallError, record_result};
use crate::aws::context::AwsContext;

/// One `SetInstanceHealth` call: `HealthStatus=Unhealthy`, `ShouldRespectGracePeriod=false` (the
/// group's health check grace period is for instances still starting, not for this), counted in
/// `/metrics`. Retrying is the caller's decision.
pub async fn mark_unhealthy(ctx: &AwsContext, hub: &Hub) -> Result<(), CallError> {
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
    record_result(hub, "SetInstanceHealth", &answer);
    answer
}
