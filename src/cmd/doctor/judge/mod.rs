//! The doctor's judgement: the configuration and the [`Facts`] in, one [`Check`] per row of
//! [`CHECKS`] out, each `ok`, `warn` or `FAIL` with what was found and, unless ok, the fix in one
//! sentence. Pure: the whole table is tested without IMDS, AWS, systemd or sockets.
//!
//! A check that could not look (IMDS silent, no credentials) says so: `warn` when these options
//! need AWS, since the check above that could not answer has already failed; `ok` when they do
//! not, since then nothing depends on it.

mod group;
mod host;
mod load_balancer;

use std::time::Duration;

use serde::Serialize;

use super::facts::{AwsFacts, Facts, GroupFacts, HookInfo, Permission, Transition};
use crate::config::{Config, Settings};
use crate::fmt::format_duration;
use crate::model::lifecycle_state::LifecycleState;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    /// The word printed in the first column.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the doctor's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// For `warn` and `FAIL`: what to do, in one sentence.
    pub fix: Option<String>,
}

/// A check's outcome before it is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    status: Status,
    detail: String,
    fix: Option<String>,
}

fn ok(detail: impl Into<String>) -> Verdict {
    Verdict {
        status: Status::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn warn(detail: impl Into<String>, fix: impl Into<String>) -> Verdict {
    Verdict {
        status: Status::Warn,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn fail(detail: impl Into<String>, fix: impl Into<String>) -> Verdict {
    Verdict {
        status: Status::Fail,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// What every check reads.
pub struct Input<'a> {
    pub config: &'a Config,
    pub settings: &'a Settings,
    pub facts: &'a Facts,
}

impl Input<'_> {
    /// Whether these options use the Auto Scaling API at all (as the guard decides it).
    fn needs_aws(&self) -> bool {
        self.config.lifecycle.enabled() || self.config.busy.enabled()
    }

    /// A check that could not look, and why.
    fn not_checked(&self, why: &str) -> Verdict {
        if self.needs_aws() {
            warn(format!("not checked: {why}"), "fix the FAIL above first")
        } else {
            ok(format!(
                "not checked: {why} (these options use no lifecycle hook, protection or EMF)"
            ))
        }
    }

    fn aws(&self) -> Result<&AwsFacts, Verdict> {
        match &self.facts.aws {
            super::facts::AwsFact::NotAsked(blocker) => Err(self.not_checked(blocker.describe())),
            super::facts::AwsFact::Asked(aws) => Ok(aws),
        }
    }

    /// The group, if it is known and exists; else the verdict of a check that cannot look.
    fn group(&self) -> Result<&GroupFacts, Verdict> {
        let aws = self.aws()?;
        match &aws.group {
            None => Err(self.not_checked("the group is unknown")),
            Some(g) if matches!(g.described, Ok(None)) => {
                Err(self.not_checked(&format!("there is no group {}", g.name)))
            }
            Some(g) => Ok(g),
        }
    }

    /// The group's hooks, if they could be read.
    fn hooks(&self) -> Result<&[HookInfo], Verdict> {
        let group = self.group()?;
        match &group.hooks {
            Ok(hooks) => Ok(hooks),
            Err(err) => Err(warn(
                format!("not checked: cannot read the hooks ({})", err.text()),
                "allow autoscaling:DescribeLifecycleHooks (see its line)",
            )),
        }
    }

    /// The configured termination hook as the group has it; `Ok(None)` when none is
    /// configured.
    fn terminate_hook(&self) -> Result<Option<&HookInfo>, Verdict> {
        let Some(name) = &self.config.lifecycle.terminate_hook else {
            return Ok(None);
        };
        let found = self
            .hooks()?
            .iter()
            .find(|h| &h.name == name && h.transition == Transition::Terminating);
        match found {
            Some(hook) => Ok(Some(hook)),
            None => Err(warn(
                format!("not checked: the group has no termination hook {name}"),
                "fix the FAIL above first",
            )),
        }
    }

    /// The agent's longest orderly stop: the drain, then the grace after the stop signal.
    fn drain_and_stop(&self) -> Duration {
        self.config
            .drain_timeout
            .saturating_add(self.config.stop_timeout)
    }

    /// `drain 1m + stop 30s`, for messages.
    fn drain_and_stop_text(&self) -> String {
        format!(
            "drain {} + stop {}",
            format_duration(self.config.drain_timeout),
            format_duration(self.config.stop_timeout)
        )
    }
}

/// A check: reads the input, gives a verdict.
type Judge = fn(&Input) -> Verdict;

/// Every check, in the order printed: the options, the instance, its group and hooks, the
/// permissions, the host.
pub const CHECKS: &[(&str, Judge)] = &[
    ("config", host::config),
    ("command", host::command),
    ("imds", host::imds),
    ("region", host::region),
    ("metadata-tags", host::metadata_tags),
    ("spot", host::spot),
    ("credentials", host::credentials),
    ("group", group::group),
    ("instance", group::instance),
    ("terminate-hook", group::terminate_hook),
    ("launch-hook", group::launch_hook),
    ("heartbeat", group::heartbeat),
    ("hook-timeout", group::hook_timeout),
    ("instance-lifecycle-policy", group::retention),
    (
        "autoscaling:DescribeAutoScalingInstances",
        group::describe_instances,
    ),
    ("autoscaling:DescribeLifecycleHooks", group::describe_hooks),
    ("autoscaling:CompleteLifecycleAction", group::complete),
    (
        "autoscaling:RecordLifecycleActionHeartbeat",
        group::record_heartbeat,
    ),
    ("autoscaling:SetInstanceProtection", group::protection),
    ("autoscaling:SetInstanceHealth", group::instance_health),
    ("target-groups", load_balancer::target_groups),
    ("target-group-health-check", load_balancer::health_check),
    ("target-group-spot-budget", load_balancer::spot_budget),
    (
        "elasticloadbalancing:DeregisterTargets",
        load_balancer::deregister_targets,
    ),
    (
        "elasticloadbalancing:DescribeTargetHealth",
        load_balancer::describe_target_health,
    ),
    (
        "elasticloadbalancing:DescribeTargetGroupAttributes",
        load_balancer::describe_attributes,
    ),
    (
        "elasticloadbalancing:RegisterTargets",
        load_balancer::register_targets,
    ),
    ("unit-stop-timeout", host::unit_stop_timeout),
    ("unit-kill-mode", host::unit_kill_mode),
    ("health-port", host::health_port),
    ("cgroup", host::cgroup),
];

/// Every check's verdict, in table order.
pub fn judge(config: &Config, settings: &Settings, facts: &Facts) -> Vec<Check> {
    let input = Input {
        config,
        settings,
        facts,
    };
    CHECKS
        .iter()
        .map(|(name, check)| {
            let v = check(&input);
            Check {
                name,
                status: v.status,
                detail: v.detail,
                fix: v.fix,
            }
        })
        .collect()
}

/// The calls that change something which these options make, so their permission must be
/// proven; each with the option that needs it.
pub fn wanted_probes(config: &Config) -> Vec<Permission> {
    let lifecycle = &config.lifecycle;
    let mut wanted = Vec::new();
    if lifecycle.enabled() {
        wanted.push(Permission::CompleteLifecycleAction);
    }
    if lifecycle.terminate_hook.is_some() {
        wanted.push(Permission::RecordLifecycleActionHeartbeat);
    }
    if config.busy.protect {
        wanted.push(Permission::SetInstanceProtection);
    }
    wanted
}

/// Why no probe may be made now, if so. A probe with a random token cannot match a real
/// lifecycle action, but the rule is stricter than that: never while the instance is anywhere
/// but in service (or standby), nor while IMDS says it is on its way out.
pub fn probe_blocker(state: Option<&str>, target_state: Option<&str>) -> Option<String> {
    match state {
        None => Some("the instance's lifecycle state is unknown".to_string()),
        Some(s)
            if !matches!(
                LifecycleState::parse(s),
                LifecycleState::InService | LifecycleState::Standby
            ) =>
        {
            Some(format!(
                "the instance is in {s}, and the doctor probes only outside lifecycle actions"
            ))
        }
        _ => match target_state {
            Some(t) if LifecycleState::parse(t) != LifecycleState::InService => Some(format!(
                "IMDS says the instance is on its way to {t}, and the doctor probes only outside lifecycle actions"
            )),
            _ => None,
        },
    }
}

/// The exit status: 0 when nothing FAILs, else 1.
pub fn exit_code(checks: &[Check]) -> u8 {
    if checks.iter().any(|c| c.status == Status::Fail) {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests;
