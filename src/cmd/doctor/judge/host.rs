//! The checks of the options and the host: the configuration and command, what IMDS says of
//! the instance, the credentials, the systemd unit and the health port.

use std::time::Duration;

use super::{Input, Verdict, fail, ok, warn};
use crate::aws::imds::ImdsError;
use crate::cmd::doctor::facts::{
    CommandFact, CredentialsFact, ImdsFact, PortFact, SystemdFact, TagsFact,
};
use crate::config::{CgroupMode, ImdsMode, Source};
use crate::fmt::format_duration;

/// How much warning a spot interruption gives.
const SPOT_NOTICE: Duration = Duration::from_secs(120);
/// What a stop under systemd needs beyond the drain and the grace: completing the hook.
pub(super) const COMPLETION: Duration = Duration::from_secs(10);

/// `--cgroup`: which the options would get here, a cgroup of the agent's own or its process
/// group, and why.
pub(super) fn cgroup(i: &Input) -> Verdict {
    let mode = i.config.cgroup;
    match &i.facts.cgroup {
        None => warn(
            "--cgroup off: the agent's process group stands for it; a setsid() grandchild can outlive the agent and the hook's completion",
            "leave --cgroup at auto where the guard may create a cgroup",
        ),
        Some(Ok(probe)) => {
            let memory = probe.controllers.iter().any(|c| c == "memory");
            let with = match probe.controllers.as_slice() {
                [] => "no controllers (tracking only)".to_string(),
                some => format!("controllers {}", some.join(" ")),
            };
            let detail = format!(
                "--cgroup {}: the agent would run in a cgroup of its own under {}, with {with}",
                mode.as_str(),
                probe.path.display()
            );
            if i.config.memory_max.is_some() && !memory {
                warn(
                    format!("{detail}; --memory-max would not be applied"),
                    "delegate the memory controller to the guard (a pure cgroup v2 host, Delegate=yes)",
                )
            } else {
                ok(detail)
            }
        }
        Some(Err(why)) if mode == CgroupMode::Require => fail(
            format!("--cgroup require: the guard would exit 125: {why}"),
            "run the guard where it may create a cgroup (systemd with Delegate=yes, a container with a writable cgroup namespace, root on a cgroup v2 host), or use --cgroup auto",
        ),
        Some(Err(why)) => warn(
            format!(
                "--cgroup auto: the agent's process group would stand for it ({why}); a setsid() grandchild can outlive the agent"
            ),
            "run the guard where it may create a cgroup (systemd with Delegate=yes, a container with a writable cgroup namespace, root on a cgroup v2 host)",
        ),
    }
}

/// The options, as `--check-config` read them (the doctor only runs when they are valid).
pub(super) fn config(i: &Input) -> Verdict {
    let (mut flags, mut env, mut file) = (0, 0, 0);
    let mut path = None;
    for (_, setting) in i.settings.iter() {
        match setting.map(|s| &s.source) {
            Some(Source::Flag) => flags += 1,
            Some(Source::Env(_)) => env += 1,
            Some(Source::File { path: p, .. }) => {
                file += 1;
                path = Some(p.clone());
            }
            _ => {}
        }
    }
    let from_file = path.map_or(String::new(), |p| format!(", {file} from {}", p.display()));
    ok(format!(
        "valid: {flags} option(s) from flags, {env} from the environment{from_file}, the rest defaults"
    ))
}

/// The agent's program, found and executable as the guard will need it.
pub(super) fn command(i: &Input) -> Verdict {
    match &i.facts.command {
        CommandFact::Missing => warn(
            "none given: the guard refuses to start without one",
            "put the agent's command after `--`, or `command = [...]` in the --config file",
        ),
        CommandFact::Found(path) => ok(format!("{}", path.display())),
        CommandFact::Unusable(why) => fail(
            format!("{why}: the guard would exit 126 or 127"),
            "install the agent, or correct its path in the command",
        ),
    }
}

/// IMDS reachable, with an IMDSv2 session token; the hop-limit case named as such.
pub(super) fn imds(i: &Input) -> Verdict {
    let endpoint = &i.config.imds_endpoint;
    match &i.facts.imds {
        ImdsFact::NotAsked if i.needs_aws() => fail(
            "--imds off: the guard cannot learn the instance id, so it completes no hook and sets no protection",
            "use --imds auto (the default) or --imds on",
        ),
        ImdsFact::NotAsked => warn(
            "--imds off: no scale-in, spot or rebalance notice reaches the agent",
            "use --imds auto (the default) on EC2",
        ),
        // Over IPv6, no answer says as much about the endpoint being off as about the hop limit:
        // say what is known, and the causes in the order to look at them.
        ImdsFact::Failed(ImdsError::TokenTimeout { .. }) if endpoint.contains('[') => fail(
            format!(
                "the session token request to {endpoint} got no answer: the instance's IPv6 metadata endpoint may be off, its subnet not IPv6, or (in a container) the hop limit 1"
            ),
            "check HttpProtocolIpv6=enabled (aws ec2 describe-instances, MetadataOptions), an IPv6 subnet, and in a container --http-put-response-hop-limit 2; or use --imds-endpoint-mode ipv4",
        ),
        ImdsFact::Failed(ImdsError::TokenTimeout { .. }) => fail(
            format!(
                "the session token request to {endpoint} got no answer: the metadata hop limit is 1 and this runs one hop too far (a container)"
            ),
            "raise the hop limit to 2: aws ec2 modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit 2 (HttpPutResponseHopLimit: 2 in the launch template)",
        ),
        ImdsFact::Failed(err) => {
            let then = match i.config.imds {
                ImdsMode::On => "the guard would exit 125 (--imds on)",
                _ => {
                    "the guard would run without notices, and the agent hears of a scale-in only at shutdown"
                }
            };
            fail(
                format!("{err}: {then}"),
                "enable the metadata endpoint (aws ec2 modify-instance-metadata-options --http-endpoint enabled), or point --imds-endpoint at it",
            )
        }
        ImdsFact::Answered(m) => ok(format!(
            "IMDSv2 at {}: session token, instance {}",
            m.endpoint, m.instance_id
        )),
    }
}

/// The region the guard will call, and where it comes from.
pub(super) fn region(i: &Input) -> Verdict {
    let fact = &i.facts.region;
    match (fact.resolved(), &fact.imds) {
        (None, _) if i.needs_aws() => fail(
            "none: AWS_REGION is unset and IMDS gave no placement/region",
            "set AWS_REGION in the unit's environment, or let IMDS answer",
        ),
        (None, _) => ok("none (these options make no AWS call)"),
        (Some((env, true)), Some(imds)) if env != imds => warn(
            format!(
                "AWS_REGION says {env}, but the instance is in {imds}: the guard would call {env}'s Auto Scaling API"
            ),
            format!("unset AWS_REGION, or set it to {imds}"),
        ),
        (Some((region, true)), _) => ok(format!("{region} (from the environment)")),
        (Some((region, false)), _) => ok(format!("{region} (from IMDS placement/region)")),
    }
}

/// Instance tags in metadata: needed only when the group is found by its tag.
pub(super) fn metadata_tags(i: &Input) -> Verdict {
    if i.config.lifecycle.asg_name.is_some() {
        return ok("not needed: --asg-name names the group");
    }
    let Some(m) = i.facts.imds.metadata() else {
        return i.not_checked("IMDS did not answer");
    };
    let api_denied = match &i.facts.aws {
        crate::cmd::doctor::facts::AwsFact::Asked(aws) => {
            matches!(aws.member, Err(crate::aws::api::CallError::Denied(_)))
        }
        _ => false,
    };
    match &m.tags {
        TagsFact::On { group: Some(g) } => ok(format!("on: aws:autoscaling:groupName is {g}")),
        TagsFact::On { group: None } => {
            ok("on, but the instance has no aws:autoscaling:groupName tag")
        }
        TagsFact::Off if api_denied => warn(
            "off, and DescribeAutoScalingInstances is denied: the guard cannot find the group",
            "enable them (aws ec2 modify-instance-metadata-options --instance-id ID --instance-metadata-tags enabled), or give --asg-name",
        ),
        TagsFact::Off => ok("off: the guard finds the group with DescribeAutoScalingInstances"),
    }
}

/// Spot or on-demand; for spot, whether drain + stop fit the two-minute notice.
pub(super) fn spot(i: &Input) -> Verdict {
    let Some(m) = i.facts.imds.metadata() else {
        return match i.facts.imds {
            ImdsFact::NotAsked => ok("not checked: --imds off"),
            _ => warn(
                "not checked: IMDS did not answer",
                "fix the FAIL above first",
            ),
        };
    };
    match m.life_cycle.as_deref() {
        Some("spot") => spot_budget(i),
        Some(other) => ok(format!("{other}: no spot interruption notices")),
        None => ok("instance-life-cycle not given by IMDS: on-demand assumed"),
    }
}

fn spot_budget(i: &Input) -> Verdict {
    let margin = i.config.spot_margin;
    let budget = SPOT_NOTICE.saturating_sub(margin);
    let margin_text = format_duration(margin);
    if budget.is_zero() {
        return fail(
            format!("spot: --spot-margin {margin_text} leaves nothing of the two-minute notice"),
            "lower --spot-margin (the default is 10s)",
        );
    }
    let budget_text = format_duration(budget);
    if i.drain_and_stop() <= budget {
        return ok(format!(
            "spot: {} fit the two-minute notice minus --spot-margin {margin_text}",
            i.drain_and_stop_text()
        ));
    }
    warn(
        format!(
            "spot: a two-minute notice leaves {budget_text} (after --spot-margin {margin_text}) for {}: the guard cuts them to fit, and the agent may lose work",
            i.drain_and_stop_text()
        ),
        format!(
            "keep --drain-timeout + --stop-timeout within {budget_text}, or have the agent finish faster when the drain reason is spot-interruption"
        ),
    )
}

/// Which source of the SDK's chain answered; none is a FAIL when AWS is needed.
pub(super) fn credentials(i: &Input) -> Verdict {
    match &i.facts.credentials {
        CredentialsFact::Found(source) => ok(format!("from {}", source.describe())),
        CredentialsFact::Missing(why) if i.needs_aws() => fail(
            format!("none: no source of the SDK's chain answered ({why})"),
            "attach an instance profile whose role allows the calls below to the instance (or its launch template)",
        ),
        CredentialsFact::Missing(why) => {
            ok(format!("none ({why}); these options make no AWS call"))
        }
    }
}

/// The unit's TimeoutStopSec against drain + stop + completing the hook.
pub(super) fn unit_stop_timeout(i: &Input) -> Verdict {
    let unit = match &i.facts.systemd {
        SystemdFact::Absent => return ok("not under systemd: not checked"),
        SystemdFact::NoUnit { tried } => {
            return ok(format!(
                "no unit {} installed: not checked",
                tried.join(" or ")
            ));
        }
        SystemdFact::Unit(unit) => unit,
    };
    let need = i.drain_and_stop();
    let with_completion = need.saturating_add(COMPLETION);
    let name = &unit.name;
    let fix = format!(
        "set TimeoutStopSec={} or more in a drop-in (systemctl edit {name}), and raise it with the timeouts",
        with_completion.as_secs()
    );
    let Some(timeout) = unit.timeout_stop else {
        return ok(format!("{name}: TimeoutStopSec=infinity"));
    };
    let shown = format_duration(timeout);
    if timeout < need {
        fail(
            format!(
                "{name}: TimeoutStopSec={shown} is shorter than {}: systemd SIGKILLs the agent in the middle of its drain",
                i.drain_and_stop_text()
            ),
            fix,
        )
    } else if timeout < with_completion {
        warn(
            format!(
                "{name}: TimeoutStopSec={shown} leaves less than {} after {} to complete the lifecycle hook",
                format_duration(COMPLETION),
                i.drain_and_stop_text()
            ),
            fix,
        )
    } else {
        ok(format!(
            "{name}: TimeoutStopSec={shown} covers {} and completing the hook",
            i.drain_and_stop_text()
        ))
    }
}

/// KillMode=mixed: systemd's SIGTERM reaches the guard alone, which drains the agent.
pub(super) fn unit_kill_mode(i: &Input) -> Verdict {
    let unit = match &i.facts.systemd {
        SystemdFact::Unit(unit) => unit,
        _ => return ok("not under systemd: not checked"),
    };
    let why = match unit.kill_mode.as_str() {
        "mixed" => return ok(format!("{}: KillMode=mixed", unit.name)),
        "control-group" => {
            "systemd's SIGTERM reaches the agent itself at once, and it stops without draining"
        }
        "process" | "none" => {
            "when the guard overruns TimeoutStopSec, systemd kills the guard and leaves the agent running"
        }
        _ => "the guard's stop sequence is not what systemd does",
    };
    fail(
        format!("{}: KillMode={}: {why}", unit.name, unit.kill_mode),
        "set KillMode=mixed in the unit (the shipped agent-guard@.service has it)",
    )
}

/// The health port: free, or already held by this configuration's running guard.
pub(super) fn health_port(i: &Input) -> Verdict {
    match &i.facts.port {
        PortFact::Off => ok("--health-listen off"),
        PortFact::Free(addr) => ok(format!("{addr} is free")),
        PortFact::ThisGuard(addr) => ok(format!(
            "{addr} is held by this configuration's running guard"
        )),
        PortFact::Taken { addr, by } => fail(
            format!("{addr} is in use by {by}: the guard would exit 125 at start"),
            "stop what holds it, or choose another port with --health-listen",
        ),
        PortFact::Unusable { addr, error } => fail(
            format!("cannot listen on {addr} ({error}): the guard would exit 125 at start"),
            "choose an address of this host, and a port above 1023 unless the guard runs as root",
        ),
    }
}
