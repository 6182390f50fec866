//! The load-balancer checks: the target groups a drain deregisters from (and the classic load
//! balancers it cannot), whether each health check sees the guard's readiness, whether a spot
//! notice leaves time for the health check alone to take the instance out, and the
//! permissions.

use std::time::Duration;

use super::{Input, Verdict, fail, ok, warn};
use crate::cmd::doctor::facts::{LbFact, LbFacts, LbPermission, ProbeOutcome, TargetGroupInfo};
use crate::fmt::format_duration;

/// A spot notice's lead: about two minutes.
const SPOT_NOTICE: Duration = Duration::from_secs(120);

/// What was seen, or the verdict of a check that could not look.
fn facts<'a>(input: &'a Input) -> Result<&'a LbFacts, Verdict> {
    match &input.facts.load_balancer {
        LbFact::Off => Err(ok("--target-groups off: a drain deregisters nothing")),
        LbFact::NotAsked => Err(ok(
            "not checked: the group is unknown (see the lines above)",
        )),
        LbFact::Asked(lb) => Ok(lb),
    }
}

/// The target groups described, or the verdict when there are none to look at.
fn groups<'a>(input: &'a Input) -> Result<&'a [TargetGroupInfo], Verdict> {
    let lb = facts(input)?;
    match &lb.groups {
        Ok(g) if g.is_empty() => Err(ok("not needed: no target group")),
        Ok(g) => Ok(g),
        Err(e) => Err(warn(
            format!("not checked: DescribeTargetGroups failed ({})", e.text()),
            "allow elasticloadbalancing:DescribeTargetGroups to let the doctor look",
        )),
    }
}

/// `target-groups`: which ones a drain deregisters from; classic load balancers are not handled.
pub fn target_groups(input: &Input) -> Verdict {
    let lb = match facts(input) {
        Ok(lb) => lb,
        Err(v) => return v,
    };
    let arns = match &lb.arns {
        Ok(arns) => arns,
        Err(e) => {
            return warn(
                format!("cannot read the group's target groups: {}", e.text()),
                "allow autoscaling:DescribeAutoScalingGroups, or list them with --target-groups ARN,…",
            );
        }
    };
    if !lb.classic.is_empty() {
        return warn(
            format!(
                "classic load balancer(s) {} are not handled: nothing deregisters the instance from them before a spot or maintenance drain",
                lb.classic.join(", ")
            ),
            "move them to a target group (Application or Network Load Balancer), or give --lb-grace so that readiness 503 reaches their health check first",
        );
    }
    if arns.is_empty() {
        return ok(
            "none: a drain deregisters nothing (--lb-grace holds readiness at 503 instead, if set)",
        );
    }
    ok(format!(
        "{}: a spot, maintenance, crash-loop or `drain --deregister` drain deregisters the instance first",
        arns.join(", ")
    ))
}

/// `target-group-health-check`: each health check asks the guard's `/readyz` on its port.
pub fn health_check(input: &Input) -> Verdict {
    let groups = match groups(input) {
        Ok(g) => g,
        Err(v) => return v,
    };
    let Some(listen) = input.config.health_listen else {
        return warn(
            "--health-listen is off: no health check can see the guard's readiness turn 503",
            "give --health-listen and point the target groups' health checks at /readyz on its port",
        );
    };
    let wrong: Vec<String> = groups
        .iter()
        .filter_map(|g| {
            let port = match g.health_check_port.as_deref() {
                None | Some("traffic-port") => g.port,
                Some(p) => p.parse().ok(),
            };
            let path = g.health_check_path.as_deref().unwrap_or("/");
            let right = g.health_check_enabled
                && path == "/readyz"
                && port == Some(i32::from(listen.port()));
            let seen = match port {
                Some(port) => format!("{path} on port {port}"),
                None => path.to_string(),
            };
            (!right).then(|| format!("{} checks {seen}", g.arn))
        })
        .collect();
    if wrong.is_empty() {
        return ok(format!(
            "each health check asks /readyz on port {}",
            listen.port()
        ));
    }
    warn(
        format!(
            "{}, not the guard's /readyz on port {}",
            wrong.join("; "),
            listen.port()
        ),
        "point the health check at /readyz on --health-listen's port, so that readiness 503 takes the instance out even where deregistration cannot",
    )
}

/// `target-group-spot-budget`: without deregistration, the health check alone takes the
/// instance out after interval × unhealthy threshold; does that fit a spot notice?
pub fn spot_budget(input: &Input) -> Verdict {
    let groups = match groups(input) {
        Ok(g) => g,
        Err(v) => return v,
    };
    let budget = SPOT_NOTICE.saturating_sub(input.config.spot_margin);
    let slowest = groups
        .iter()
        .map(|g| (g, g.interval * g.unhealthy_threshold))
        .max_by_key(|(_, d)| *d);
    let Some((g, takes)) = slowest else {
        return ok("not needed: no target group");
    };
    let how = format!(
        "{} × {} unhealthy checks = {}",
        format_duration(g.interval),
        g.unhealthy_threshold,
        format_duration(takes)
    );
    if takes <= budget {
        return ok(format!(
            "without deregistration readiness 503 takes the instance out of {} within {how}, inside a spot notice's {}",
            g.arn,
            format_duration(budget)
        ));
    }
    warn(
        format!(
            "without deregistration a spot drain would keep receiving traffic from {} for up to {how}, longer than a spot notice's {} (with deregistration allowed, the guard takes it out first)",
            g.arn,
            format_duration(budget)
        ),
        "keep elasticloadbalancing:DeregisterTargets allowed, and lower the health check's interval or unhealthy threshold as a fallback",
    )
}

/// One permission row.
fn permission(input: &Input, which: LbPermission) -> Verdict {
    if let Err(v) = groups(input) {
        return v;
    }
    let Ok(lb) = facts(input) else {
        return ok("not needed");
    };
    let found = lb.probes.iter().find(|(p, _)| *p == which).map(|(_, o)| o);
    let needed = match which {
        LbPermission::DeregisterTargets => {
            "a drain cannot deregister the instance (only --lb-grace holds readiness)"
        }
        LbPermission::DescribeTargetHealth => {
            "the guard cannot find its targets nor see the load balancer let go"
        }
        LbPermission::DescribeTargetGroupAttributes => {
            "the deregistration delay is taken as AWS's default, 300s"
        }
        LbPermission::RegisterTargets => "a called-off drain cannot register the instance again",
    };
    let fix = format!(
        "allow elasticloadbalancing:{} on the target groups",
        which.action()
    );
    match found {
        Some(ProbeOutcome::Allowed) => ok("allowed (proven by a call that changes nothing)"),
        Some(ProbeOutcome::Denied(text)) => match which {
            LbPermission::DescribeTargetGroupAttributes => {
                warn(format!("denied: {text}; {needed}"), fix)
            }
            _ => fail(format!("denied: {text}; {needed}"), fix),
        },
        Some(ProbeOutcome::Unproven(text)) => warn(format!("not proven: {text}"), fix),
        Some(ProbeOutcome::NotProbed(why)) => ok(format!("not probed: {why}")),
        None => ok("not probed"),
    }
}

pub fn deregister_targets(input: &Input) -> Verdict {
    permission(input, LbPermission::DeregisterTargets)
}

pub fn describe_target_health(input: &Input) -> Verdict {
    permission(input, LbPermission::DescribeTargetHealth)
}

pub fn describe_attributes(input: &Input) -> Verdict {
    permission(input, LbPermission::DescribeTargetGroupAttributes)
}

pub fn register_targets(input: &Input) -> Verdict {
    permission(input, LbPermission::RegisterTargets)
}
