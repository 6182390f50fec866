//! The checks of the group: found and existing, this instance in it, its hooks against the
//! options and their timeouts against the drain, its instance lifecycle policy, and each
//! permission the guard needs.

use std::time::Duration;

use super::host::COMPLETION;
use super::{Input, Verdict, fail, ok, warn};
use crate::aws::api::CallError;
use crate::cmd::doctor::facts::{HookInfo, Member, Permission, ProbeOutcome, Transition};
use crate::config::HookResult;
use crate::fmt::format_duration;
use crate::model::lifecycle_state::LifecycleState;

/// The global timeout's ceiling.
const MAX_GLOBAL: Duration = Duration::from_secs(48 * 3600);
/// HeartbeatTimeout's bounds (PutLifecycleHook).
const HEARTBEAT_TIMEOUT_RANGE: (u64, u64) = (30, 7200);

/// The group: found (by flag, tag or API) and existing.
pub(super) fn group(i: &Input) -> Verdict {
    let aws = match i.aws() {
        Ok(aws) => aws,
        Err(v) => return v,
    };
    let Some(g) = &aws.group else {
        return match &aws.member {
            Ok(_) if !i.needs_aws() => ok(format!(
                "instance {} is in no Auto Scaling group (these options need none)",
                aws.instance_id
            )),
            Ok(_) => fail(
                format!("instance {} is in no Auto Scaling group", aws.instance_id),
                "run the guard on an instance the group launched, or leave out the lifecycle and protection options",
            ),
            Err(CallError::Denied(_)) => needed(
                i,
                "cannot find the group: no --asg-name, no metadata tag, and DescribeAutoScalingInstances is denied",
                "give --asg-name, enable instance metadata tags, or allow autoscaling:DescribeAutoScalingInstances",
            ),
            Err(err) => needed(
                i,
                &format!("cannot find the group: {}", err.text()),
                "run the doctor again; if it persists, check the path to the Auto Scaling API",
            ),
        };
    };
    let from = g.from.describe();
    match &g.described {
        Ok(Some(info)) => ok(format!(
            "{} (from {from}), {} instance(s)",
            g.name,
            info.instances.len()
        )),
        Ok(None) => needed(
            i,
            &format!("there is no group {} (from {from}) in this region", g.name),
            "check --asg-name and the region (AWS_REGION)",
        ),
        Err(err) => warn(
            format!(
                "{} (from {from}), but DescribeAutoScalingGroups failed ({}): its members and instance lifecycle policy are not checked",
                g.name,
                err.text()
            ),
            "allow autoscaling:DescribeAutoScalingGroups to whoever runs the doctor (the guard itself does not call it)",
        ),
    }
}

/// FAIL when these options need AWS, else warn.
fn needed(i: &Input, detail: &str, fix: &str) -> Verdict {
    if i.needs_aws() {
        fail(detail, fix)
    } else {
        warn(detail, fix)
    }
}

/// This instance in the group: its lifecycle state, health and protection.
pub(super) fn instance(i: &Input) -> Verdict {
    let g = match i.group() {
        Ok(g) => g,
        Err(v) => return v,
    };
    let aws = match i.aws() {
        Ok(aws) => aws,
        Err(v) => return v,
    };
    let id = &aws.instance_id;
    // DescribeAutoScalingInstances is the authority; the group's own list stands in for it.
    let row = match (&aws.member, &g.described) {
        (Ok(member), _) => member.clone(),
        (Err(_), Ok(Some(info))) => info
            .instances
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, m)| m.clone()),
        (Err(err), _) => {
            return warn(
                format!("cannot read its lifecycle state ({})", err.text()),
                "allow autoscaling:DescribeAutoScalingInstances",
            );
        }
    };
    match row {
        None => needed(
            i,
            &format!("instance {id} is not in the group {}", g.name),
            "give the group that launched it with --asg-name, or leave --asg-name out to find it",
        ),
        Some(m) if m.group != g.name => fail(
            format!("instance {id} is in the group {}, not {}", m.group, g.name),
            format!("set --asg-name {} (or leave it out)", m.group),
        ),
        Some(m) => member(i, id, &m),
    }
}

fn member(i: &Input, id: &str, m: &Member) -> Verdict {
    let protected = if m.protected {
        "protected from scale-in"
    } else {
        "not protected from scale-in"
    };
    let summary = format!("{id} is {}, {}, {protected}", m.state, m.health);
    let state = LifecycleState::parse(&m.state);
    if !m.health.eq_ignore_ascii_case("healthy") {
        warn(
            format!("{summary}: the group is replacing it"),
            "find out why the group's health check fails (its type and grace period)",
        )
    } else if state.is_standby_or_detached() {
        warn(
            format!("{summary}: lifecycle hooks do not apply to it"),
            "put it back in service (aws autoscaling exit-standby), or run the doctor on an instance in service",
        )
    } else if state.is_terminating() {
        warn(
            format!("{summary}: it is being terminated"),
            "run the doctor on an instance in service",
        )
    } else if m.protected && !i.config.busy.protect {
        warn(
            format!(
                "{summary}, and nothing releases it (--protect-while-busy is off): scale-in never picks this instance"
            ),
            "remove it (aws autoscaling set-instance-protection --no-protected-from-scale-in) and the group's NewInstancesProtectedFromScaleIn, or use --protect-while-busy",
        )
    } else {
        ok(summary)
    }
}

/// `--terminate-hook` exists with the termination transition; or the group's termination hook
/// that no option names.
pub(super) fn terminate_hook(i: &Input) -> Verdict {
    hook(
        i,
        Transition::Terminating,
        i.config.lifecycle.terminate_hook.as_deref(),
    )
}

/// `--launch-hook` exists with the launch transition; or the group's unnamed launch hook.
pub(super) fn launch_hook(i: &Input) -> Verdict {
    let verdict = hook(
        i,
        Transition::Launching,
        i.config.lifecycle.launch_hook.as_deref(),
    );
    if verdict.status != super::Status::Ok {
        return verdict;
    }
    let found = i.hooks().ok().and_then(|hooks| {
        let name = i.config.lifecycle.launch_hook.as_deref()?;
        hooks.iter().find(|h| h.name == name)
    });
    match found {
        // The guard sends no heartbeat while the agent starts: the hook must outwait it.
        Some(h) if i.config.ready_timeout > h.heartbeat_timeout => warn(
            format!(
                "{}: its HeartbeatTimeout {} is shorter than --ready-timeout {}: an agent slow to start meets the group's {} first",
                h.name,
                format_duration(h.heartbeat_timeout),
                format_duration(i.config.ready_timeout),
                h.default_result
            ),
            "raise the hook's HeartbeatTimeout above --ready-timeout, or lower --ready-timeout",
        ),
        _ => verdict,
    }
}

fn hook(i: &Input, want: Transition, named: Option<&str>) -> Verdict {
    let hooks = match i.hooks() {
        Ok(hooks) => hooks,
        Err(v) => return v,
    };
    let (flag, kind, event) = match want {
        Transition::Launching => ("--launch-hook", "launch", "launch"),
        _ => ("--terminate-hook", "termination", "scale-in"),
    };
    let group = i.group().map(|g| g.name.clone()).unwrap_or_default();
    let of_kind: Vec<&HookInfo> = hooks.iter().filter(|h| h.transition == want).collect();
    let Some(name) = named else {
        return match of_kind.first() {
            None if want == Transition::Terminating => warn(
                "none, and the group has none: a scale-in terminates the instance without waiting for the agent to drain",
                "add a termination hook to the group (aws autoscaling put-lifecycle-hook --lifecycle-transition autoscaling:EC2_INSTANCE_TERMINATING) and name it with --terminate-hook",
            ),
            None => ok("none, and the group has none"),
            Some(h) => warn(
                format!(
                    "the group's {kind} hook {} is not named by {flag}: every {event} waits its HeartbeatTimeout ({}) and then {}",
                    names(&of_kind),
                    format_duration(h.heartbeat_timeout),
                    h.default_result
                ),
                format!("set {flag} {}", h.name),
            ),
        };
    };
    match hooks.iter().find(|h| h.name == name) {
        None => fail(
            format!("the group {group} has no hook {name}; {}", listing(hooks)),
            format!(
                "name one of the group's with {flag}, or create {name} (aws autoscaling put-lifecycle-hook --auto-scaling-group-name {group} --lifecycle-hook-name {name} --lifecycle-transition autoscaling:EC2_INSTANCE_{})",
                if want == Transition::Launching {
                    "LAUNCHING"
                } else {
                    "TERMINATING"
                }
            ),
        ),
        Some(h) if h.transition != want => fail(
            format!(
                "{name} is a {} hook, not a {kind} hook",
                h.transition.describe()
            ),
            format!("name the group's {kind} hook with {flag}, or create one"),
        ),
        Some(h) => {
            let others: Vec<&HookInfo> = of_kind.into_iter().filter(|o| o.name != name).collect();
            if others.is_empty() {
                ok(describe(h))
            } else {
                warn(
                    format!(
                        "{name} fits, but the group also has the {kind} hook {}, which nothing here completes: every {event} waits for it",
                        names(&others)
                    ),
                    "remove the other hooks, or have another tool complete them",
                )
            }
        }
    }
}

fn describe(h: &HookInfo) -> String {
    format!(
        "{}: HeartbeatTimeout {}, global timeout {}, default {}",
        h.name,
        format_duration(h.heartbeat_timeout),
        format_duration(h.global_timeout),
        h.default_result
    )
}

fn names(hooks: &[&HookInfo]) -> String {
    some_of(hooks.iter().map(|h| h.name.clone()), hooks.len())
}

/// "its hooks: a (launch), b (termination)", or "it has no hooks".
fn listing(hooks: &[HookInfo]) -> String {
    if hooks.is_empty() {
        return "it has no hooks".to_string();
    }
    let each = hooks
        .iter()
        .map(|h| format!("{} ({})", h.name, h.transition.describe()));
    format!("its hooks: {}", some_of(each, hooks.len()))
}

/// How many names a line lists: a group may have thousands of hooks (20,000 made a 430 KB line).
const NAMES_SHOWN: usize = 10;

/// The first [`NAMES_SHOWN`] of `total` items, comma-separated, then how many more there are.
fn some_of(items: impl Iterator<Item = String>, total: usize) -> String {
    let shown: Vec<String> = items.take(NAMES_SHOWN).collect();
    let more = total.saturating_sub(shown.len());
    match more {
        0 => shown.join(", "),
        n => format!("{}, and {n} more", shown.join(", ")),
    }
}

/// The heartbeat interval against the termination hook's HeartbeatTimeout.
pub(super) fn heartbeat(i: &Input) -> Verdict {
    let hook = match i.terminate_hook() {
        Ok(Some(hook)) => hook,
        Ok(None) => return ok("no --terminate-hook: no heartbeats"),
        Err(v) => return v,
    };
    let timeout = hook.heartbeat_timeout;
    let (every, source) = match i.config.lifecycle.heartbeat_interval {
        Some(every) => (every, "--heartbeat-interval"),
        None => (
            (timeout / 3).max(Duration::from_millis(100)),
            "a third of it",
        ),
    };
    let (every_text, timeout_text) = (format_duration(every), format_duration(timeout));
    let fix =
        format!("set --heartbeat-interval to at most a third of {timeout_text}, or leave it out");
    if every >= timeout {
        fail(
            format!(
                "every {every_text} ({source}) against a HeartbeatTimeout of {timeout_text}: the action times out between heartbeats, and the group applies {} in the middle of the drain",
                hook.default_result
            ),
            fix,
        )
    } else if every * 2 > timeout {
        warn(
            format!(
                "every {every_text} ({source}) against a HeartbeatTimeout of {timeout_text}: one late heartbeat and the action times out"
            ),
            fix,
        )
    } else {
        ok(format!(
            "every {every_text} ({source}) against a HeartbeatTimeout of {timeout_text}"
        ))
    }
}

/// The termination hook's global timeout against drain + stop + completion.
pub(super) fn hook_timeout(i: &Input) -> Verdict {
    let hook = match i.terminate_hook() {
        Ok(Some(hook)) => hook,
        Ok(None) => return ok("no --terminate-hook: nothing waits for the drain"),
        Err(v) => return v,
    };
    let global = hook.global_timeout;
    let need = i.drain_and_stop();
    let detail = format!(
        "{}'s global timeout {} (the smaller of 48h and 100 × HeartbeatTimeout {})",
        hook.name,
        format_duration(global),
        format_duration(hook.heartbeat_timeout)
    );
    let fix = if need.saturating_add(COMPLETION) >= MAX_GLOBAL {
        "keep --drain-timeout + --stop-timeout well under 48h".to_string()
    } else {
        let secs = need.saturating_add(COMPLETION).as_secs().div_ceil(100);
        let secs = secs.clamp(HEARTBEAT_TIMEOUT_RANGE.0, HEARTBEAT_TIMEOUT_RANGE.1);
        format!("raise the hook's HeartbeatTimeout to {secs}s or more, or shorten the drain")
    };
    if global < need {
        fail(
            format!(
                "{detail} is shorter than {}: the group stops waiting in the middle of the drain",
                i.drain_and_stop_text()
            ),
            fix,
        )
    } else if global < need.saturating_add(COMPLETION) {
        warn(
            format!(
                "{detail} leaves less than {} after {} to complete the hook",
                format_duration(COMPLETION),
                i.drain_and_stop_text()
            ),
            fix,
        )
    } else {
        ok(format!("{detail} covers {}", i.drain_and_stop_text()))
    }
}

/// `TerminateHookAbandon: retain` together with something that ABANDONs the termination hook.
pub(super) fn retention(i: &Input) -> Verdict {
    let g = match i.group() {
        Ok(g) => g,
        Err(v) => return v,
    };
    let info = match &g.described {
        Ok(Some(info)) => info,
        _ => {
            return warn(
                "not checked: DescribeAutoScalingGroups did not answer",
                "allow autoscaling:DescribeAutoScalingGroups to whoever runs the doctor",
            );
        }
    };
    let cost = "the instance then stays in Terminating:Retained, running and billed, until someone terminates it";
    let way_out = "set the group's instance lifecycle policy to terminate (RetentionTriggers TerminateHookAbandon=terminate)";
    match info.terminate_hook_abandon.as_deref() {
        Some("retain") => {}
        Some(other) => return ok(format!("TerminateHookAbandon is {other}")),
        None => return ok("none: an ABANDONed termination hook terminates the instance"),
    }
    let lifecycle = &i.config.lifecycle;
    if lifecycle.terminate_hook.is_some() && lifecycle.on_unclean_exit == HookResult::Abandon {
        return warn(
            format!(
                "TerminateHookAbandon is retain, and --on-unclean-exit abandon ABANDONs the hook when the agent does not stop cleanly: {cost}"
            ),
            format!("use --on-unclean-exit continue, or {way_out}"),
        );
    }
    let abandoning: Vec<&HookInfo> = i
        .hooks()
        .unwrap_or_default()
        .iter()
        .filter(|h| h.transition == Transition::Terminating && h.default_result == "ABANDON")
        .collect();
    if abandoning.is_empty() {
        return ok("TerminateHookAbandon is retain, and nothing here ABANDONs a termination hook");
    }
    warn(
        format!(
            "TerminateHookAbandon is retain, and {} defaults to ABANDON when it times out: {cost}",
            names(&abandoning)
        ),
        format!("set the hook's DefaultResult to CONTINUE, or {way_out}"),
    )
}

/// DescribeAutoScalingInstances: needed to find the group without a flag or tag.
pub(super) fn describe_instances(i: &Input) -> Verdict {
    let aws = match i.aws() {
        Ok(aws) => aws,
        Err(v) => return v,
    };
    let by_api = aws
        .group
        .as_ref()
        .is_none_or(|g| g.from == crate::cmd::doctor::facts::GroupFrom::Api);
    match &aws.member {
        Ok(_) => ok("allowed (DescribeAutoScalingInstances answered)"),
        Err(CallError::Denied(_)) if by_api => fail(
            "denied: without --asg-name or a metadata tag, the guard finds the group with it",
            "allow autoscaling:DescribeAutoScalingInstances (AWS does not scope it to a group), or give --asg-name",
        ),
        Err(CallError::Denied(_)) if i.config.busy.protect => warn(
            "denied: --protect-while-busy cannot read the protection at start, so a restarted guard may flap it",
            "allow autoscaling:DescribeAutoScalingInstances",
        ),
        Err(CallError::Denied(_)) => ok("denied, and not needed with these options"),
        Err(err) => warn(
            format!("could not prove: {}", err.text()),
            "run the doctor again",
        ),
    }
}

/// DescribeLifecycleHooks: the default heartbeat interval comes from it.
pub(super) fn describe_hooks(i: &Input) -> Verdict {
    let g = match i.group() {
        Ok(g) => g,
        Err(v) => return v,
    };
    let lifecycle = &i.config.lifecycle;
    match &g.hooks {
        Ok(_) => ok("allowed (DescribeLifecycleHooks answered)"),
        Err(CallError::Denied(_))
            if lifecycle.terminate_hook.is_some() && lifecycle.heartbeat_interval.is_none() =>
        {
            warn(
                "denied: the guard cannot read the hook's HeartbeatTimeout and heartbeats every 60s, which may be too seldom",
                "allow autoscaling:DescribeLifecycleHooks, or set --heartbeat-interval",
            )
        }
        Err(CallError::Denied(_)) => ok("denied, and not needed with these options"),
        Err(err) => warn(
            format!("could not prove: {}", err.text()),
            "run the doctor again",
        ),
    }
}

/// CompleteLifecycleAction, proven with a random token.
pub(super) fn complete(i: &Input) -> Verdict {
    probe(
        i,
        Permission::CompleteLifecycleAction,
        "no hook is configured",
        "every lifecycle action runs to its timeout and then takes the hook's default result",
    )
}

/// RecordLifecycleActionHeartbeat, proven with a random token.
pub(super) fn record_heartbeat(i: &Input) -> Verdict {
    probe(
        i,
        Permission::RecordLifecycleActionHeartbeat,
        "no --terminate-hook",
        "a drain longer than the hook's HeartbeatTimeout is cut off by the group",
    )
}

/// SetInstanceProtection, proven by setting the value the instance already has.
pub(super) fn protection(i: &Input) -> Verdict {
    probe(
        i,
        Permission::SetInstanceProtection,
        "no --protect-while-busy",
        "a busy instance cannot be protected from scale-in",
    )
}

/// SetInstanceHealth: no call proves it without changing the instance's health.
pub(super) fn instance_health(_: &Input) -> Verdict {
    ok(
        "not probed: no call proves it without changing the instance's health (IAM policy simulation needs iam:SimulatePrincipalPolicy, which an instance profile rarely has)",
    )
}

fn probe(i: &Input, permission: Permission, unneeded: &str, denied: &str) -> Verdict {
    if !super::wanted_probes(i.config).contains(&permission) {
        return ok(format!("not needed: {unneeded}"));
    }
    let g = match i.group() {
        Ok(g) => g,
        Err(v) => return v,
    };
    let action = permission.action();
    let proof = match permission {
        Permission::SetInstanceProtection => "setting the protection the instance already has",
        _ => "a ValidationError for a random action token: IAM let the call through",
    };
    match g
        .probes
        .iter()
        .find(|(p, _)| *p == permission)
        .map(|(_, o)| o)
    {
        Some(ProbeOutcome::Allowed) => ok(format!("allowed (proven by {proof})")),
        Some(ProbeOutcome::Denied(_)) => fail(
            format!("denied: {denied}"),
            format!(
                "allow autoscaling:{action} on the group (arn:aws:autoscaling:REGION:ACCOUNT:autoScalingGroup:*:autoScalingGroupName/{})",
                g.name
            ),
        ),
        Some(ProbeOutcome::Unproven(why)) => warn(
            format!("could not prove: {why}"),
            "run the doctor again; if it persists, check the role's policy for this action",
        ),
        Some(ProbeOutcome::NotProbed(why)) => warn(
            format!("not proven: {why}"),
            "run the doctor again once the instance is InService and no guard of this configuration runs",
        ),
        None => warn("not probed", "run the doctor again"),
    }
}

#[cfg(test)]
mod listing_tests {
    use super::*;

    #[test]
    fn a_long_list_is_cut_and_says_how_many_more() {
        let few = ["a", "b"].map(String::from);
        assert_eq!(some_of(few.into_iter(), 2), "a, b");
        let many = (0..20_000).map(|i| format!("hook-{i}"));
        let line = some_of(many, 20_000);
        assert!(line.ends_with("hook-9, and 19990 more"), "{line}");
        assert!(line.len() < 200, "{}", line.len());
    }
}
