//! The judgement as a table: a deployment that fits passes whole, and each misfit, one at a
//! time, turns exactly the check that should see it to `warn` or `FAIL`.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::aws::api::CallError;
use crate::aws::imds::ImdsError;
use crate::cmd::doctor::facts::*;
use crate::config::{Invocation, load};

const ID: &str = "i-0123456789abcdef0";
const GROUP: &str = "workers";
const TG: &str = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/1";
/// The options of the deployment that fits.
const GOOD: &[&str] = &[
    "--terminate-hook",
    "drain-hook",
    "--launch-hook",
    "launch-hook",
    "--protect-while-busy",
];
/// As GOOD, with IMDS over IPv6.
const IPV6: &[&str] = &[
    "--terminate-hook",
    "drain-hook",
    "--launch-hook",
    "launch-hook",
    "--protect-while-busy",
    "--imds-endpoint-mode",
    "ipv6",
];

fn config(args: &[&str]) -> (Config, Settings) {
    let argv = ["agent-guard", "--check-config"]
        .iter()
        .chain(args)
        .chain(&["--", "/bin/true"])
        .copied();
    match load(argv) {
        Ok(Invocation::CheckConfig(config, settings)) => (config, settings),
        other => panic!("not a configuration: {other:?}"),
    }
}

fn member(state: &str) -> Member {
    Member {
        group: GROUP.to_string(),
        state: state.to_string(),
        health: "HEALTHY".to_string(),
        protected: false,
    }
}

fn hook(name: &str, transition: Transition, heartbeat_secs: u64, default: &str) -> HookInfo {
    let heartbeat_timeout = Duration::from_secs(heartbeat_secs);
    HookInfo {
        name: name.to_string(),
        transition,
        heartbeat_timeout,
        global_timeout: (heartbeat_timeout * 100).min(Duration::from_secs(172_800)),
        default_result: default.to_string(),
    }
}

/// A group with both hooks, every permission, in a unit that fits.
fn good() -> Facts {
    let group = GroupFacts {
        name: GROUP.to_string(),
        from: GroupFrom::Tag,
        described: Ok(Some(GroupInfo {
            instances: vec![(ID.to_string(), member("InService"))],
            terminate_hook_abandon: None,
        })),
        hooks: Ok(vec![
            hook("drain-hook", Transition::Terminating, 300, "ABANDON"),
            hook("launch-hook", Transition::Launching, 900, "ABANDON"),
        ]),
        probes: vec![
            (Permission::CompleteLifecycleAction, ProbeOutcome::Allowed),
            (
                Permission::RecordLifecycleActionHeartbeat,
                ProbeOutcome::Allowed,
            ),
            (Permission::SetInstanceProtection, ProbeOutcome::Allowed),
        ],
    };
    Facts {
        command: CommandFact::Found("/bin/true".into()),
        imds: ImdsFact::Answered(Metadata {
            endpoint: "http://169.254.169.254".to_string(),
            instance_id: ID.to_string(),
            region: Some("us-east-1".to_string()),
            life_cycle: Some("on-demand".to_string()),
            tags: TagsFact::On {
                group: Some(GROUP.to_string()),
            },
            target_state: Some("InService".to_string()),
        }),
        region: RegionFact {
            env: None,
            imds: Some("us-east-1".to_string()),
        },
        credentials: CredentialsFact::Found(CredentialSource::InstanceProfile),
        aws: AwsFact::Asked(Box::new(AwsFacts {
            instance_id: ID.to_string(),
            member: Ok(Some(member("InService"))),
            group: Some(group),
        })),
        systemd: SystemdFact::Unit(Unit {
            name: "agent-guard@worker.service".to_string(),
            timeout_stop: Some(Duration::from_secs(180)),
            kill_mode: "mixed".to_string(),
        }),
        port: PortFact::Free(SocketAddr::from(([0, 0, 0, 0], 8099))),
        cgroup: Some(Ok(crate::process::cgroup::Probe {
            path: "/sys/fs/cgroup/system.slice/agent-guard@worker.service".into(),
            controllers: vec!["memory".to_string(), "pids".to_string()],
        })),
        load_balancer: LbFact::Asked(Box::new(LbFacts {
            arns: Ok(vec![TG.to_string()]),
            classic: Vec::new(),
            groups: Ok(vec![TargetGroupInfo {
                arn: TG.to_string(),
                target_type: "instance".to_string(),
                port: Some(8080),
                health_check_enabled: true,
                health_check_path: Some("/readyz".to_string()),
                health_check_port: Some("8099".to_string()),
                interval: Duration::from_secs(10),
                unhealthy_threshold: 3,
            }]),
            probes: vec![
                (LbPermission::DeregisterTargets, ProbeOutcome::Allowed),
                (LbPermission::DescribeTargetHealth, ProbeOutcome::Allowed),
                (
                    LbPermission::DescribeTargetGroupAttributes,
                    ProbeOutcome::Allowed,
                ),
                (
                    LbPermission::RegisterTargets,
                    ProbeOutcome::NotProbed("no harmless call".to_string()),
                ),
            ],
        })),
    }
}

fn lb(f: &mut Facts) -> &mut LbFacts {
    match &mut f.load_balancer {
        LbFact::Asked(lb) => lb,
        _ => panic!("the fixture asked Elastic Load Balancing"),
    }
}

fn target_group(f: &mut Facts) -> &mut TargetGroupInfo {
    &mut lb(f).groups.as_mut().expect("described")[0]
}

fn aws(f: &mut Facts) -> &mut AwsFacts {
    match &mut f.aws {
        AwsFact::Asked(aws) => aws,
        AwsFact::NotAsked(_) => panic!("the fixture asked AWS"),
    }
}

fn group(f: &mut Facts) -> &mut GroupFacts {
    aws(f).group.as_mut().expect("the fixture has a group")
}

fn info(f: &mut Facts) -> &mut GroupInfo {
    match &mut group(f).described {
        Ok(Some(info)) => info,
        _ => panic!("the fixture described the group"),
    }
}

fn hooks(f: &mut Facts) -> &mut Vec<HookInfo> {
    group(f).hooks.as_mut().expect("the fixture read the hooks")
}

fn probe(f: &mut Facts, permission: Permission, outcome: ProbeOutcome) {
    for (p, o) in &mut group(f).probes {
        if *p == permission {
            *o = outcome.clone();
        }
    }
}

fn denied() -> CallError {
    CallError::Denied("AccessDenied: not authorized".to_string())
}

fn metadata(f: &mut Facts) -> &mut Metadata {
    match &mut f.imds {
        ImdsFact::Answered(m) => m,
        _ => panic!("the fixture's IMDS answered"),
    }
}

fn unit(f: &mut Facts) -> &mut Unit {
    match &mut f.systemd {
        SystemdFact::Unit(u) => u,
        _ => panic!("the fixture has a unit"),
    }
}

fn judged(args: &[&str], facts: &Facts) -> Vec<Check> {
    let (config, settings) = config(args);
    judge(&config, &settings, facts)
}

#[test]
fn a_deployment_that_fits_passes_whole() {
    let checks = judged(GOOD, &good());
    let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
    let table: Vec<&str> = CHECKS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, table, "one line per check, in table order");
    for check in &checks {
        assert_eq!(check.status, Status::Ok, "{check:?}");
        assert!(check.fix.is_none(), "{check:?}");
    }
    assert_eq!(exit_code(&checks), 0);
}

/// One misfit: the options, a change to the facts, the check that must see it, how, and a
/// word its detail must hold.
type Case = (
    &'static [&'static str],
    fn(&mut Facts),
    &'static str,
    Status,
    &'static str,
);

#[rustfmt::skip]
const CASES: &[Case] = &[
    (GOOD, |f| f.command = CommandFact::Missing, "command", Status::Warn, "none given"),
    (GOOD, |f| f.command = CommandFact::Unusable("not found".into()), "command", Status::Fail, "not found"),
    (GOOD, |f| f.imds = ImdsFact::Failed(ImdsError::TokenTimeout { endpoint: "e".into() }), "imds", Status::Fail, "hop limit is 1"),
    (IPV6, |f| f.imds = ImdsFact::Failed(ImdsError::TokenTimeout { endpoint: "e".into() }), "imds", Status::Fail, "IPv6 metadata endpoint may be off"),
    (GOOD, |f| f.imds = ImdsFact::Failed(ImdsError::Unreachable { endpoint: "e".into(), detail: "refused".into() }), "imds", Status::Fail, "cannot reach IMDS"),
    (GOOD, |f| f.imds = ImdsFact::NotAsked, "imds", Status::Fail, "--imds off"),
    (&[], |f| f.imds = ImdsFact::NotAsked, "imds", Status::Warn, "--imds off"),
    (GOOD, |f| f.region.env = Some("eu-west-1".into()), "region", Status::Warn, "AWS_REGION says eu-west-1"),
    (GOOD, |f| f.region = RegionFact::default(), "region", Status::Fail, "AWS_REGION is unset"),
    (GOOD, |f| {
        metadata(f).tags = TagsFact::Off;
        aws(f).member = Err(denied());
    }, "metadata-tags", Status::Warn, "off, and DescribeAutoScalingInstances is denied"),
    (GOOD, |f| metadata(f).life_cycle = Some("spot".into()), "spot", Status::Ok, "fit the two-minute notice"),
    (&["--drain-timeout", "5m"], |f| metadata(f).life_cycle = Some("spot".into()), "spot", Status::Warn, "leaves 1m 50s"),
    (&["--spot-margin", "2m"], |f| metadata(f).life_cycle = Some("spot".into()), "spot", Status::Fail, "leaves nothing"),
    (GOOD, |f| f.credentials = CredentialsFact::Missing("no source".into()), "credentials", Status::Fail, "no source of the SDK's chain"),
    (GOOD, |f| {
        aws(f).group = None;
        aws(f).member = Ok(None);
    }, "group", Status::Fail, "in no Auto Scaling group"),
    (GOOD, |f| {
        aws(f).group = None;
        aws(f).member = Err(denied());
    }, "group", Status::Fail, "DescribeAutoScalingInstances is denied"),
    (GOOD, |f| group(f).described = Ok(None), "group", Status::Fail, "there is no group workers"),
    (GOOD, |f| group(f).described = Err(denied()), "group", Status::Warn, "DescribeAutoScalingGroups failed"),
    (GOOD, |f| aws(f).member = Ok(None), "instance", Status::Fail, "is not in the group workers"),
    (GOOD, |f| aws(f).member.as_mut().expect("ok").as_mut().expect("row").group = "other".into(), "instance", Status::Fail, "is in the group other, not workers"),
    (GOOD, |f| aws(f).member = Ok(Some(member("Standby"))), "instance", Status::Warn, "hooks do not apply"),
    (GOOD, |f| aws(f).member.as_mut().expect("ok").as_mut().expect("row").health = "UNHEALTHY".into(), "instance", Status::Warn, "replacing it"),
    (&["--terminate-hook", "drain-hook"], |f| aws(f).member.as_mut().expect("ok").as_mut().expect("row").protected = true, "instance", Status::Warn, "nothing releases it"),
    (&["--terminate-hook", "nope"], |_| {}, "terminate-hook", Status::Fail, "no hook nope; its hooks: drain-hook (termination), launch-hook (launch)"),
    (&["--terminate-hook", "launch-hook"], |_| {}, "terminate-hook", Status::Fail, "is a launch hook"),
    (&[], |_| {}, "terminate-hook", Status::Warn, "drain-hook is not named by --terminate-hook"),
    (&[], |f| hooks(f).clear(), "terminate-hook", Status::Warn, "without waiting for the agent to drain"),
    (GOOD, |f| hooks(f).push(hook("other", Transition::Terminating, 300, "CONTINUE")), "terminate-hook", Status::Warn, "also has the termination hook other"),
    (&["--launch-hook", "nope"], |_| {}, "launch-hook", Status::Fail, "no hook nope"),
    (&["--terminate-hook", "drain-hook"], |_| {}, "launch-hook", Status::Warn, "launch-hook is not named by --launch-hook"),
    (&["--launch-hook", "launch-hook", "--ready-timeout", "20m"], |_| {}, "launch-hook", Status::Warn, "shorter than --ready-timeout"),
    (&["--terminate-hook", "drain-hook", "--heartbeat-interval", "5m"], |_| {}, "heartbeat", Status::Fail, "times out between heartbeats"),
    (&["--terminate-hook", "drain-hook", "--heartbeat-interval", "3m"], |_| {}, "heartbeat", Status::Warn, "one late heartbeat"),
    (&["--terminate-hook", "drain-hook", "--drain-timeout", "2h"], |f| hooks(f)[0] = hook("drain-hook", Transition::Terminating, 30, "ABANDON"), "hook-timeout", Status::Fail, "stops waiting in the middle of the drain"),
    (GOOD, |f| info(f).terminate_hook_abandon = Some("retain".into()), "instance-lifecycle-policy", Status::Warn, "--on-unclean-exit abandon"),
    (&["--terminate-hook", "drain-hook", "--on-unclean-exit", "continue"], |f| info(f).terminate_hook_abandon = Some("retain".into()), "instance-lifecycle-policy", Status::Warn, "drain-hook defaults to ABANDON"),
    (GOOD, |f| {
        aws(f).group = None;
        aws(f).member = Err(denied());
    }, "autoscaling:DescribeAutoScalingInstances", Status::Fail, "finds the group with it"),
    (GOOD, |f| aws(f).member = Err(denied()), "autoscaling:DescribeAutoScalingInstances", Status::Warn, "--protect-while-busy"),
    (&["--terminate-hook", "drain-hook"], |f| group(f).hooks = Err(denied()), "autoscaling:DescribeLifecycleHooks", Status::Warn, "heartbeats every 60s"),
    (GOOD, |f| probe(f, Permission::CompleteLifecycleAction, ProbeOutcome::Denied("AccessDenied".into())), "autoscaling:CompleteLifecycleAction", Status::Fail, "runs to its timeout"),
    (GOOD, |f| probe(f, Permission::RecordLifecycleActionHeartbeat, ProbeOutcome::Denied("AccessDenied".into())), "autoscaling:RecordLifecycleActionHeartbeat", Status::Fail, "cut off by the group"),
    (GOOD, |f| probe(f, Permission::SetInstanceProtection, ProbeOutcome::Denied("AccessDenied".into())), "autoscaling:SetInstanceProtection", Status::Fail, "cannot be protected"),
    (GOOD, |f| probe(f, Permission::CompleteLifecycleAction, ProbeOutcome::NotProbed("the instance is in Pending:Wait".into())), "autoscaling:CompleteLifecycleAction", Status::Warn, "Pending:Wait"),
    (GOOD, |f| probe(f, Permission::CompleteLifecycleAction, ProbeOutcome::Unproven("InternalFailure".into())), "autoscaling:CompleteLifecycleAction", Status::Warn, "could not prove"),
    (GOOD, |f| unit(f).timeout_stop = Some(Duration::from_secs(60)), "unit-stop-timeout", Status::Fail, "SIGKILLs the agent"),
    (GOOD, |f| unit(f).timeout_stop = Some(Duration::from_secs(95)), "unit-stop-timeout", Status::Warn, "to complete the lifecycle hook"),
    (GOOD, |f| unit(f).kill_mode = "control-group".into(), "unit-kill-mode", Status::Fail, "reaches the agent itself"),
    (GOOD, |f| f.port = PortFact::Taken { addr: SocketAddr::from(([0, 0, 0, 0], 8099)), by: "another program".into() }, "health-port", Status::Fail, "in use by another program"),
    (GOOD, |f| f.port = PortFact::Unusable { addr: SocketAddr::from(([0, 0, 0, 0], 80)), error: "permission denied".into() }, "health-port", Status::Fail, "cannot listen"),
    (&["--cgroup", "off"], |f| f.cgroup = None, "cgroup", Status::Warn, "setsid() grandchild"),
    (GOOD, |f| f.cgroup = Some(Err("not delegated".into())), "cgroup", Status::Warn, "process group would stand for it (not delegated)"),
    (&["--cgroup", "require"], |f| f.cgroup = Some(Err("not delegated".into())), "cgroup", Status::Fail, "would exit 125: not delegated"),
    (&["--memory-max", "1G"], |f| f.cgroup = Some(Ok(crate::process::cgroup::Probe { path: "/x".into(), controllers: vec![] })), "cgroup", Status::Warn, "--memory-max would not be applied"),
    (GOOD, |f| lb(f).classic = vec!["old-elb".into()], "target-groups", Status::Warn, "old-elb are not handled"),
    (GOOD, |f| lb(f).arns = Err(denied()), "target-groups", Status::Warn, "cannot read the group's target groups"),
    (&["--target-groups", "off"], |f| f.load_balancer = LbFact::Off, "target-groups", Status::Ok, "--target-groups off"),
    (GOOD, |f| target_group(f).health_check_path = Some("/".into()), "target-group-health-check", Status::Warn, "checks / on port 8099"),
    (GOOD, |f| target_group(f).health_check_port = Some("traffic-port".into()), "target-group-health-check", Status::Warn, "/readyz on port 8080"),
    (&["--health-listen", "off"], |_| {}, "target-group-health-check", Status::Warn, "--health-listen is off"),
    (GOOD, |f| {
        target_group(f).interval = Duration::from_secs(30);
        target_group(f).unhealthy_threshold = 5;
    }, "target-group-spot-budget", Status::Warn, "for up to 30s × 5 unhealthy checks = 2m 30s"),
    (GOOD, |f| lb(f).probes[0].1 = ProbeOutcome::Denied("AccessDenied".into()), "elasticloadbalancing:DeregisterTargets", Status::Fail, "cannot deregister"),
    (GOOD, |f| lb(f).probes[1].1 = ProbeOutcome::Denied("AccessDenied".into()), "elasticloadbalancing:DescribeTargetHealth", Status::Fail, "cannot find its targets"),
    (GOOD, |f| lb(f).probes[2].1 = ProbeOutcome::Denied("AccessDenied".into()), "elasticloadbalancing:DescribeTargetGroupAttributes", Status::Warn, "default, 300s"),
];

#[test]
fn each_misfit_turns_its_own_check() {
    for (args, mutate, name, status, words) in CASES {
        let mut facts = good();
        mutate(&mut facts);
        let checks = judged(args, &facts);
        let check = checks
            .iter()
            .find(|c| c.name == *name)
            .unwrap_or_else(|| panic!("no check {name}"));
        assert_eq!(check.status, *status, "{args:?}: {check:?}");
        assert!(check.detail.contains(words), "{args:?}: {check:?}");
        if *status != Status::Ok {
            let fix = check.fix.as_deref().unwrap_or_default();
            assert!(!fix.is_empty(), "a fix: {check:?}");
        }
        let expected = u8::from(checks.iter().any(|c| c.status == Status::Fail));
        assert_eq!(exit_code(&checks), expected);
    }
}

#[test]
fn every_check_that_can_fail_has_a_misfit() {
    // `config` cannot: invalid options stop the doctor before it judges (exit 125).
    // SetInstanceHealth and RegisterTargets are never probed, and say so.
    for (name, _) in CHECKS {
        if *name == "config"
            || *name == "autoscaling:SetInstanceHealth"
            || *name == "elasticloadbalancing:RegisterTargets"
        {
            continue;
        }
        assert!(
            CASES
                .iter()
                .any(|(_, _, n, s, _)| n == name && *s != Status::Ok),
            "no misfit for {name}"
        );
    }
}

#[test]
fn without_credentials_the_group_checks_say_why_they_did_not_look() {
    let mut facts = good();
    facts.credentials = CredentialsFact::Missing("no source".into());
    facts.aws = AwsFact::NotAsked(Blocker::Credentials);
    let checks = judged(GOOD, &facts);
    let group = checks.iter().find(|c| c.name == "group").expect("group");
    assert_eq!(group.status, Status::Warn, "{group:?}");
    assert_eq!(group.detail, "not checked: no credentials");
    // Options that make no AWS call need no credentials: nothing to fix.
    let checks = judged(&[], &facts);
    for name in ["credentials", "group", "terminate-hook"] {
        let check = checks.iter().find(|c| c.name == name).expect("a check");
        assert_eq!(check.status, Status::Ok, "{check:?}");
    }
}

#[test]
fn probes_are_wanted_only_for_what_the_options_do() {
    let (config, _) = self::config(&[]);
    assert!(wanted_probes(&config).is_empty());
    let (config, _) = self::config(&["--launch-hook", "l"]);
    assert_eq!(
        wanted_probes(&config),
        [Permission::CompleteLifecycleAction]
    );
    let (config, _) = self::config(GOOD);
    assert_eq!(
        wanted_probes(&config),
        [
            Permission::CompleteLifecycleAction,
            Permission::RecordLifecycleActionHeartbeat,
            Permission::SetInstanceProtection
        ]
    );
}

#[test]
fn never_probes_outside_service() {
    assert_eq!(probe_blocker(Some("InService"), Some("InService")), None);
    assert_eq!(probe_blocker(Some("Standby"), None), None);
    for state in [
        "Pending:Wait",
        "Terminating:Wait",
        "Warmed:Pending:Wait",
        "Pending",
    ] {
        assert!(
            probe_blocker(Some(state), Some("InService")).is_some(),
            "{state}"
        );
    }
    assert!(probe_blocker(None, Some("InService")).is_some());
    assert!(probe_blocker(Some("InService"), Some("Terminated")).is_some());
}
