//! This instance in its load balancers' target groups (Elastic Load Balancing v2): found once,
//! deregistered before the agent hears of a drain the group does not deregister for (a spot
//! interruption, a maintenance drain, a crash loop, an operator's `drain --deregister`), waited
//! out while the load balancer drains its connections, and registered again if the drain is
//! called off.
//!
//! On a scale-in the group itself deregisters the instance before `Terminating:Wait`; everywhere
//! else nobody does, and a load balancer keeps sending until its health checks fail (interval ×
//! unhealthy threshold: 150 s with the defaults, longer than a spot notice's two minutes).
//!
//! Which targets: the instance by id in `instance` target groups, by its private addresses in
//! `ip` ones, each on the ports it is registered on (`DescribeTargetHealth` says which), so that
//! nothing registered by someone else for another instance is touched.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancingv2::types::TargetDescription;

use crate::aws::api::CallError;
use crate::config::{DeregistrationWait, TargetGroups};
use crate::model::load_balancer::TargetState;

/// How often the target's state is read while the load balancer drains it.
const POLL: Duration = Duration::from_millis(500);
/// The deregistration delay when the target group's attributes cannot be read (AWS's default).
const DEFAULT_DELAY: Duration = Duration::from_secs(300);

/// Why the load balancers could not be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read the group's target groups: {0}")]
    Lookup(CallError),
    #[error("cannot read the targets of {arn}: {error}")]
    Health { arn: String, error: CallError },
    #[error("DeregisterTargets for {arn}: {error}")]
    Deregister { arn: String, error: CallError },
    #[error("RegisterTargets for {arn}: {error}")]
    Register { arn: String, error: CallError },
}

impl TargetError {
    /// The call was refused for want of a permission.
    pub fn denied(&self) -> bool {
        let error = match self {
            TargetError::Lookup(e) => e,
            TargetError::Health { error, .. }
            | TargetError::Deregister { error, .. }
            | TargetError::Register { error, .. } => error,
        };
        matches!(error, CallError::Denied(_))
    }
}

/// One target of this instance in one target group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// The instance id, or one of its private addresses.
    pub id: String,
    pub port: Option<i32>,
}

/// This instance's targets in one target group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub arn: String,
    pub targets: Vec<Target>,
    /// `deregistration_delay.timeout_seconds`.
    pub delay: Duration,
    /// The state of this instance's targets when they were found (the least settled of them).
    pub state: TargetState,
}

/// How a wait for the load balancer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// No target of this instance is `draining` any more.
    Done { took: Duration },
    /// The wait was cut to the budget (or to `--deregistration-wait`) while targets still drain.
    Cut { after: Duration },
}

/// What identifies this instance as a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: String,
    /// Its private IPv4 and IPv6 addresses (IMDS `local-ipv4`, `ipv6`), for `ip` target groups.
    pub addresses: Vec<String>,
}

impl Identity {
    fn matches(&self, id: &str) -> bool {
        id == self.instance_id || self.addresses.iter().any(|a| a == id)
    }
}

/// The target groups `setting` names: read from the group for `Auto`.
pub async fn target_group_arns(
    autoscaling: &aws_sdk_autoscaling::Client,
    group: &str,
    setting: &TargetGroups,
) -> Result<Vec<String>, TargetError> {
    match setting {
        TargetGroups::Off => Ok(Vec::new()),
        TargetGroups::Arns(arns) => Ok(arns.clone()),
        TargetGroups::Auto => {
            let out = autoscaling
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(group)
                .send()
                .await
                .map_err(|e| TargetError::Lookup(CallError::from(&e)))?;
            let mut arns: BTreeSet<String> = out
                .auto_scaling_groups()
                .iter()
                .flat_map(|g| g.target_group_arns().iter().cloned())
                .collect();
            // Traffic sources attached with AttachTrafficSources: an account that never used
            // them, or a role that may not read them, still has its TargetGroupARNs.
            if let Ok(sources) = autoscaling
                .describe_traffic_sources()
                .auto_scaling_group_name(group)
                .traffic_source_type("elbv2")
                .send()
                .await
            {
                arns.extend(
                    sources
                        .traffic_sources()
                        .iter()
                        .filter_map(|s| s.identifier().map(str::to_string)),
                );
            }
            Ok(arns.into_iter().collect())
        }
    }
}

/// This instance's targets in each of `arns`, with each group's deregistration delay. A target
/// group where the instance is not registered is left out.
pub async fn memberships(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    arns: &[String],
    me: &Identity,
) -> Result<Vec<Membership>, TargetError> {
    let mut out = Vec::new();
    for arn in arns {
        let health = elb
            .describe_target_health()
            .target_group_arn(arn)
            .send()
            .await
            .map_err(|e| TargetError::Health {
                arn: arn.clone(),
                error: CallError::from(&e),
            })?;
        let mine: Vec<_> = health
            .target_health_descriptions()
            .iter()
            .filter(|d| {
                d.target()
                    .and_then(|t| t.id())
                    .is_some_and(|id| me.matches(id))
            })
            .collect();
        let state = least_settled(mine.iter().map(|d| state_of(d.target_health())));
        let mut targets: Vec<Target> = mine
            .iter()
            .filter_map(|d| d.target())
            .filter_map(|t| {
                Some(Target {
                    id: t.id()?.to_string(),
                    port: t.port(),
                })
            })
            .collect();
        targets.sort();
        targets.dedup();
        if targets.is_empty() {
            continue;
        }
        out.push(Membership {
            arn: arn.clone(),
            targets,
            delay: deregistration_delay(elb, arn).await,
            state,
        });
    }
    Ok(out)
}

/// The target group's deregistration delay; AWS's default when it cannot be read.
async fn deregistration_delay(elb: &aws_sdk_elasticloadbalancingv2::Client, arn: &str) -> Duration {
    let Ok(out) = elb
        .describe_target_group_attributes()
        .target_group_arn(arn)
        .send()
        .await
    else {
        return DEFAULT_DELAY;
    };
    out.attributes()
        .iter()
        .find(|a| a.key() == Some("deregistration_delay.timeout_seconds"))
        .and_then(|a| a.value())
        .and_then(|v| v.parse::<u64>().ok())
        // The API's bound (0–3600 s): a larger value is not a delay the load balancer keeps.
        .map_or(DEFAULT_DELAY, |s| Duration::from_secs(s.min(3600)))
}

fn descriptions(targets: &[Target]) -> Vec<TargetDescription> {
    targets
        .iter()
        .map(|t| {
            TargetDescription::builder()
                .id(&t.id)
                .set_port(t.port)
                .build()
        })
        .collect()
}

/// `DeregisterTargets` for each membership.
pub async fn deregister(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    memberships: &[Membership],
) -> Result<(), TargetError> {
    for m in memberships {
        elb.deregister_targets()
            .target_group_arn(&m.arn)
            .set_targets(Some(descriptions(&m.targets)))
            .send()
            .await
            .map_err(|e| TargetError::Deregister {
                arn: m.arn.clone(),
                error: CallError::from(&e),
            })?;
    }
    Ok(())
}

/// `RegisterTargets` for each membership: the same targets, on the same ports, as before the
/// deregistration (only after a drain that was called off).
pub async fn register(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    memberships: &[Membership],
) -> Result<(), TargetError> {
    for m in memberships {
        elb.register_targets()
            .target_group_arn(&m.arn)
            .set_targets(Some(descriptions(&m.targets)))
            .send()
            .await
            .map_err(|e| TargetError::Register {
                arn: m.arn.clone(),
                error: CallError::from(&e),
            })?;
    }
    Ok(())
}

/// How long to wait for the load balancer: the longest deregistration delay (or the
/// `--deregistration-wait` cap), never past `budget`.
pub fn wait_bound(
    memberships: &[Membership],
    wait: DeregistrationWait,
    budget: Duration,
) -> Duration {
    let delay = memberships
        .iter()
        .map(|m| m.delay)
        .max()
        .unwrap_or(Duration::ZERO);
    let wanted = match wait {
        DeregistrationWait::Auto => delay,
        DeregistrationWait::AtMost(cap) => delay.min(cap),
    };
    wanted.min(budget)
}

/// A target's state as the SDK read it; `unknown` when it is missing or new to this version.
fn state_of(health: Option<&aws_sdk_elasticloadbalancingv2::types::TargetHealth>) -> TargetState {
    health
        .and_then(|h| h.state())
        .and_then(|s| s.as_str().parse().ok())
        .unwrap_or(TargetState::Unknown)
}

/// Of several targets' states, the one that says the most about whether the load balancer still
/// sends: `draining` (or unreadable) before anything else, then the others as found.
fn least_settled(states: impl Iterator<Item = TargetState>) -> TargetState {
    let all: Vec<TargetState> = states.collect();
    [TargetState::Draining, TargetState::Unknown]
        .into_iter()
        .find(|s| all.contains(s))
        .or_else(|| all.first().copied())
        .unwrap_or(TargetState::Unused)
}

/// The state of this instance's targets in each membership, in order (`unknown` where the
/// answer could not be read).
pub async fn states(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    memberships: &[Membership],
) -> Vec<TargetState> {
    let mut out = Vec::with_capacity(memberships.len());
    for m in memberships {
        let state = match elb
            .describe_target_health()
            .target_group_arn(&m.arn)
            .set_targets(Some(descriptions(&m.targets)))
            .send()
            .await
        {
            Ok(read) => least_settled(
                read.target_health_descriptions()
                    .iter()
                    .map(|d| state_of(d.target_health())),
            ),
            Err(_) => TargetState::Unknown,
        };
        out.push(state);
    }
    out
}

/// Whether the load balancer may still send: a target still `draining`, or an unreadable
/// answer (the wait is bounded anyway).
fn still_draining(states: &[TargetState]) -> bool {
    states
        .iter()
        .any(|s| matches!(s, TargetState::Draining | TargetState::Unknown))
}

/// Polls until no target of this instance is `draining`, or `bound` passes; `seen` is given
/// each read's states (one per membership, in order).
pub async fn wait_drained(
    elb: &aws_sdk_elasticloadbalancingv2::Client,
    memberships: &[Membership],
    bound: Duration,
    mut seen: impl FnMut(&[TargetState]),
) -> Drained {
    let started = Instant::now();
    let until = started + bound;
    loop {
        let now_states = states(elb, memberships).await;
        seen(&now_states);
        if !still_draining(&now_states) {
            return Drained::Done {
                took: started.elapsed(),
            };
        }
        let now = Instant::now();
        if now >= until {
            return Drained::Cut {
                after: started.elapsed(),
            };
        }
        tokio::time::sleep(POLL.min(until - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(delay: u64) -> Membership {
        Membership {
            arn: "arn".to_string(),
            targets: Vec::new(),
            delay: Duration::from_secs(delay),
            state: TargetState::Healthy,
        }
    }

    #[test]
    fn the_wait_is_the_longest_delay_cut_to_the_cap_and_the_budget() {
        let m = [member(5), member(300)];
        let budget = Duration::from_secs(100);
        assert_eq!(
            wait_bound(&m, DeregistrationWait::Auto, budget),
            budget,
            "cut to the budget"
        );
        assert_eq!(
            wait_bound(&m[..1], DeregistrationWait::Auto, budget),
            Duration::from_secs(5)
        );
        assert_eq!(
            wait_bound(
                &m,
                DeregistrationWait::AtMost(Duration::from_secs(20)),
                budget
            ),
            Duration::from_secs(20)
        );
        assert_eq!(
            wait_bound(&m, DeregistrationWait::AtMost(Duration::ZERO), budget),
            Duration::ZERO,
            "0 tells the agent at once"
        );
        assert_eq!(
            wait_bound(&[], DeregistrationWait::Auto, budget),
            Duration::ZERO
        );
    }

    #[test]
    fn draining_or_unreadable_targets_decide_the_state_shown_and_the_wait() {
        use TargetState::*;
        assert_eq!(least_settled([Healthy, Draining].into_iter()), Draining);
        assert_eq!(least_settled([Unused, Unknown].into_iter()), Unknown);
        assert_eq!(least_settled([Unused, Unused].into_iter()), Unused);
        assert_eq!(least_settled(std::iter::empty()), Unused, "gone");
        assert!(still_draining(&[Unused, Draining]));
        assert!(still_draining(&[Unknown]));
        assert!(!still_draining(&[Unused, Healthy]));
    }

    #[test]
    fn an_instance_matches_by_id_or_private_address() {
        let me = Identity {
            instance_id: "i-1".to_string(),
            addresses: vec!["10.0.0.5".to_string()],
        };
        assert!(me.matches("i-1"));
        assert!(me.matches("10.0.0.5"));
        assert!(!me.matches("i-2"));
        assert!(!me.matches("10.0.0.6"));
    }
}
