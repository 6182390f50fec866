//! What Elastic Load Balancing v2 says of the target groups a drain would deregister this
//! instance from, through the guard's own calls: the groups (`--target-groups`, the group's for
//! `auto`), the group's classic load balancers (not handled), each target group's health check,
//! and each permission proven by a call that cannot change anything:
//! - `DescribeTargetHealth` and `DescribeTargetGroupAttributes`: reads.
//! - `DeregisterTargets` of a target that is not registered (an instance id of zeros, or for
//!   `ip` groups an address of TEST-NET-1): AWS refuses it (`InvalidTarget`) if IAM let it
//!   through, AccessDenied if not. Nothing registered is named, so nothing can be deregistered.
//! - `RegisterTargets` is never made: one that IAM let through could register something.

use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::Client;
use aws_sdk_elasticloadbalancingv2::types::TargetDescription;

use super::aws::outcome;
use crate::aws::api::CallError;
use crate::aws::targets::target_group_arns;
use crate::cmd::doctor::facts::{LbFacts, LbPermission, ProbeOutcome, TargetGroupInfo};
use crate::config::Config;

/// No instance has this id.
const NO_INSTANCE: &str = "i-00000000000000000";
/// TEST-NET-1 (RFC 5737): never a target's address.
const NO_ADDRESS: &str = "192.0.2.1";

/// The target groups and what is known of them.
pub async fn gather(
    autoscaling: &aws_sdk_autoscaling::Client,
    elb: &Client,
    config: &Config,
    group: &str,
) -> LbFacts {
    let arns = target_group_arns(autoscaling, group, &config.load_balancer.target_groups)
        .await
        .map_err(|e| match e {
            crate::aws::targets::TargetError::Lookup(e) => e,
            other => CallError::Fatal(other.to_string()),
        });
    let classic = classic(autoscaling, group).await;
    let listed = arns.as_deref().unwrap_or_default();
    let groups = if listed.is_empty() {
        Ok(Vec::new())
    } else {
        describe(elb, listed).await
    };
    let probes = match &groups {
        Ok(found) if !found.is_empty() => probes(elb, &found[0]).await,
        _ => Vec::new(),
    };
    LbFacts {
        arns,
        classic,
        groups,
        probes,
    }
}

/// The group's classic load balancers; none if they cannot be read.
async fn classic(autoscaling: &aws_sdk_autoscaling::Client, group: &str) -> Vec<String> {
    let Ok(out) = autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
    else {
        return Vec::new();
    };
    out.auto_scaling_groups()
        .iter()
        .flat_map(|g| g.load_balancer_names().iter().cloned())
        .collect()
}

async fn describe(elb: &Client, arns: &[String]) -> Result<Vec<TargetGroupInfo>, CallError> {
    let out = elb
        .describe_target_groups()
        .set_target_group_arns(Some(arns.to_vec()))
        .send()
        .await
        .map_err(|e| CallError::from(&e))?;
    Ok(out
        .target_groups()
        .iter()
        .map(|g| TargetGroupInfo {
            arn: g.target_group_arn().unwrap_or_default().to_string(),
            target_type: g
                .target_type()
                .map_or("instance", |t| t.as_str())
                .to_string(),
            port: g.port(),
            health_check_enabled: g.health_check_enabled().unwrap_or(true),
            health_check_path: g.health_check_path().map(str::to_string),
            health_check_port: g.health_check_port().map(str::to_string),
            interval: Duration::from_secs(
                g.health_check_interval_seconds()
                    .unwrap_or(30)
                    .max(0)
                    .unsigned_abs()
                    .into(),
            ),
            unhealthy_threshold: g
                .unhealthy_threshold_count()
                .unwrap_or(2)
                .max(0)
                .unsigned_abs(),
        })
        .collect())
}

/// Each permission a drain needs, proven on `group` by a call that changes nothing.
async fn probes(elb: &Client, group: &TargetGroupInfo) -> Vec<(LbPermission, ProbeOutcome)> {
    let arn = group.arn.as_str();
    let nobody = if group.target_type == "ip" {
        NO_ADDRESS
    } else {
        NO_INSTANCE
    };
    let deregister = outcome(
        elb.deregister_targets()
            .target_group_arn(arn)
            .targets(TargetDescription::builder().id(nobody).build())
            .send()
            .await,
    );
    let health = outcome(
        elb.describe_target_health()
            .target_group_arn(arn)
            .send()
            .await,
    );
    let attributes = outcome(
        elb.describe_target_group_attributes()
            .target_group_arn(arn)
            .send()
            .await,
    );
    vec![
        (LbPermission::DeregisterTargets, deregister),
        (LbPermission::DescribeTargetHealth, health),
        (LbPermission::DescribeTargetGroupAttributes, attributes),
        (
            LbPermission::RegisterTargets,
            ProbeOutcome::NotProbed(
                "no call proves it without registering something; it is needed only to undo a called-off drain".to_string(),
            ),
        ),
    ]
}
