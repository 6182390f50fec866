//! `agent-guard doctor` end to end: the real binary against the simulated IMDS and Auto Scaling
//! API (and a real moto server for the Describe calls it implements), a real guard holding the
//! health port, a stand-in `systemctl` on PATH. A deployment that fits passes whole and changes
//! nothing; each misfit turns its own check to warn or FAIL, with the exit status to match.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_guard::sim::autoscaling::{AutoScalingSim, Faults, Hook, LAUNCHING, TERMINATING};
use agent_guard::sim::imds::{self, ImdsSim};
use serde_json::Value;

use crate::support::{Guard, command, scratch};

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";
/// The options of the deployment that fits the world below.
const FITS: &[&str] = &[
    "--terminate-hook",
    "drain-hook",
    "--launch-hook",
    "launch-hook",
    "--protect-while-busy",
];

struct World {
    imds: ImdsSim,
    asg: AutoScalingSim,
}

/// An instance in service in a group with a termination hook (5 min) and a launch hook (15
/// min, longer than the default --ready-timeout), metadata tags on.
fn world() -> World {
    let imds = ImdsSim::start().expect("imds sim");
    imds.set_tag("aws:autoscaling:groupName", Some(GROUP));
    let asg = AutoScalingSim::start().expect("asg sim");
    asg.add_instance(GROUP, INSTANCE, "InService");
    asg.put_hook(
        GROUP,
        Hook::new("drain-hook", TERMINATING).heartbeat_timeout(Duration::from_secs(300)),
    );
    asg.put_hook(
        GROUP,
        Hook::new("launch-hook", LAUNCHING).heartbeat_timeout(Duration::from_secs(900)),
    );
    World { imds, asg }
}

/// `agent-guard doctor [--json]` pointed at the world, with test credentials and nothing of
/// the caller's: the region comes from IMDS, as on an instance.
fn doctor_command(w: &World, json: bool, options: &[&str]) -> Command {
    let mut cmd = command();
    cmd.env_remove("INVOCATION_ID")
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", w.asg.url())
        .env("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTEST")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .arg("doctor")
        .args(json.then_some("--json"))
        .args(["--imds", "on", "--imds-endpoint", &w.imds.url()])
        .args(options);
    if !options.contains(&"--") {
        cmd.args(["--", "/bin/true"]);
    }
    cmd
}

/// Runs the doctor with `--json`: (exit code, the document).
fn doctor(w: &World, options: &[&str]) -> (i32, Value) {
    run_json(doctor_command(w, true, options))
}

/// Runs a doctor command that has `--json`: (exit code, the document).
fn run_json(mut cmd: Command) -> (i32, Value) {
    let out = cmd.output().expect("agent-guard doctor runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

/// The check called `name`.
fn check<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {doc:#}"))
}

/// Asserts the check's status and a few words of its detail, and a fix unless it is ok.
fn expect(doc: &Value, name: &str, status: &str, words: &str) {
    let c = check(doc, name);
    assert_eq!(c["status"], status, "{name}: {c:#}");
    let detail = c["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(words), "{name}: {words:?} not in {c:#}");
    if status != "ok" {
        assert!(
            c["fix"].as_str().is_some_and(|f| !f.is_empty()),
            "{name}: a fix: {c:#}"
        );
    }
}

/// Every check but `except` is ok.
fn all_ok_but(doc: &Value, except: &[&str]) {
    for c in doc["checks"].as_array().expect("checks") {
        let name = c["name"].as_str().unwrap_or_default();
        if !except.contains(&name) {
            assert_eq!(c["status"], "ok", "{c:#}");
        }
    }
}

fn calls(w: &World, action: &str) -> Vec<agent_guard::sim::autoscaling::Call> {
    w.asg
        .calls()
        .into_iter()
        .filter(|c| c.action == action)
        .collect()
}

#[test]
fn a_deployment_that_fits_passes_whole_and_changes_nothing() {
    let w = world();
    let (code, doc) = doctor(&w, FITS);
    assert_eq!(code, 0, "{doc:#}");
    all_ok_but(&doc, &[]);
    assert_eq!(doc["result"], "pass");
    assert_eq!(doc["instance_id"], INSTANCE);
    assert_eq!(doc["group"], GROUP);
    assert_eq!(doc["region"], "us-east-1");
    expect(&doc, "group", "ok", "workers (from the metadata tag");
    expect(&doc, "credentials", "ok", "environment variables");
    expect(&doc, "autoscaling:CompleteLifecycleAction", "ok", "proven");
    // The probes: a random token and no instance id, refused as no action has it.
    for action in ["CompleteLifecycleAction", "RecordLifecycleActionHeartbeat"] {
        let probes = calls(&w, action);
        assert_eq!(probes.len(), 1, "{probes:?}");
        let probe = &probes[0];
        assert_eq!(
            (probe.status, probe.error.as_deref()),
            (400, Some("ValidationError"))
        );
        assert!(!probe.params.contains_key("InstanceId"), "{probe:?}");
        assert_eq!(probe.params["LifecycleActionToken"].len(), 36, "{probe:?}");
    }
    let protection = calls(&w, "SetInstanceProtection");
    assert_eq!(protection.len(), 1, "{protection:?}");
    assert_eq!(protection[0].params["ProtectedFromScaleIn"], "false");
    // Nothing changed: no action completed, the instance as it was.
    assert!(w.asg.completions().is_empty());
    assert_eq!(w.asg.instance_state(INSTANCE).as_deref(), Some("InService"));
    assert_eq!(w.asg.protected(INSTANCE), Some(false));
}

#[test]
fn the_text_answer_is_one_line_per_check_and_the_counts() {
    let w = world();
    let out = doctor_command(&w, false, FITS).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("agent-guard doctor: true on i-0123456789abcdef0, group workers"),
        "{text}"
    );
    let oks = lines.iter().filter(|l| l.starts_with("ok    ")).count();
    // One line per check, all ok, then the counts.
    assert!(oks >= 20, "{text}");
    assert_eq!(
        lines.len(),
        oks + 4,
        "heading, blank, checks, blank, counts: {text}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(format!("0 FAIL, 0 warn, {oks} ok: nothing FAILs").as_str()),
        "{text}"
    );
}

#[test]
fn a_hop_limit_of_one_fails_imds_and_names_the_fix() {
    let w = world();
    w.imds.set_faults(imds::Faults {
        blackhole_token: true,
        ..imds::Faults::default()
    });
    let (code, doc) = doctor(&w, FITS);
    assert_eq!(code, 1);
    expect(&doc, "imds", "fail", "hop limit is 1");
    let fix = check(&doc, "imds")["fix"].as_str().unwrap_or_default();
    assert!(fix.contains("--http-put-response-hop-limit 2"), "{fix}");
    // Without an instance id, nothing asks the group.
    expect(&doc, "group", "warn", "not checked");
    assert!(w.asg.calls().is_empty());
}

#[test]
fn a_hook_the_group_lacks_fails_naming_the_hooks_it_has() {
    let w = world();
    let (code, doc) = doctor(&w, &["--terminate-hook", "nope"]);
    assert_eq!(code, 1);
    expect(
        &doc,
        "terminate-hook",
        "fail",
        "no hook nope; its hooks: drain-hook (termination), launch-hook (launch)",
    );
    // A launch hook named where a termination hook is wanted.
    let (code, doc) = doctor(&w, &["--terminate-hook", "launch-hook"]);
    assert_eq!(code, 1);
    expect(&doc, "terminate-hook", "fail", "is a launch hook");
    // The environment counts as in a real run.
    let mut cmd = doctor_command(&w, true, &[]);
    cmd.env("AGENT_GUARD_LAUNCH_HOOK", "nope");
    let (code, doc) = run_json(cmd);
    assert_eq!(code, 1);
    expect(&doc, "launch-hook", "fail", "no hook nope");
}

#[test]
fn hooks_the_options_do_not_name_warn() {
    let w = world();
    let (code, doc) = doctor(&w, &[]);
    assert_eq!(code, 0, "warnings only: {doc:#}");
    expect(
        &doc,
        "terminate-hook",
        "warn",
        "drain-hook is not named by --terminate-hook: every scale-in waits its HeartbeatTimeout (5m) and then ABANDON",
    );
    expect(
        &doc,
        "launch-hook",
        "warn",
        "launch-hook is not named by --launch-hook",
    );
    // A launch hook shorter than the wait for readiness.
    let (_, doc) = doctor(
        &w,
        &["--launch-hook", "launch-hook", "--ready-timeout", "20m"],
    );
    expect(&doc, "launch-hook", "warn", "shorter than --ready-timeout");
}

#[test]
fn hook_timeouts_are_held_against_the_heartbeat_and_the_drain() {
    let w = world();
    let (code, doc) = doctor(
        &w,
        &[
            "--terminate-hook",
            "drain-hook",
            "--heartbeat-interval",
            "5m",
        ],
    );
    assert_eq!(code, 1);
    expect(&doc, "heartbeat", "fail", "times out between heartbeats");
    let (code, doc) = doctor(
        &w,
        &[
            "--terminate-hook",
            "drain-hook",
            "--heartbeat-interval",
            "3m",
        ],
    );
    assert_eq!(code, 0);
    expect(&doc, "heartbeat", "warn", "one late heartbeat");
    // 30 s × 100 is a 50 min global timeout: shorter than a 1 h drain.
    w.asg.put_hook(
        GROUP,
        Hook::new("drain-hook", TERMINATING).heartbeat_timeout(Duration::from_secs(30)),
    );
    let (code, doc) = doctor(
        &w,
        &["--terminate-hook", "drain-hook", "--drain-timeout", "1h"],
    );
    assert_eq!(code, 1);
    expect(&doc, "hook-timeout", "fail", "global timeout 50m");
    expect(&doc, "heartbeat", "ok", "every 10s (a third of it)");
}

#[test]
fn a_spot_drain_longer_than_the_notice_warns() {
    let w = world();
    w.imds.set_instance_life_cycle("spot");
    let (_, doc) = doctor(&w, FITS);
    expect(&doc, "spot", "ok", "fit the two-minute notice");
    let (code, doc) = doctor(&w, &["--drain-timeout", "5m"]);
    assert_eq!(code, 0);
    expect(
        &doc,
        "spot",
        "warn",
        "leaves 1m 50s (after --spot-margin 10s) for drain 5m + stop 30s",
    );
}

#[test]
fn retaining_abandoned_instances_warns_with_the_cost_and_the_ways_out() {
    let w = world();
    w.asg.set_terminate_hook_abandon(GROUP, "retain");
    let (code, doc) = doctor(&w, FITS);
    assert_eq!(code, 0);
    expect(
        &doc,
        "instance-lifecycle-policy",
        "warn",
        "running and billed",
    );
    let fix = check(&doc, "instance-lifecycle-policy")["fix"]
        .as_str()
        .unwrap_or_default();
    assert!(
        fix.contains("--on-unclean-exit continue")
            && fix.contains("TerminateHookAbandon=terminate"),
        "{fix}"
    );
    // CONTINUE on an unclean exit, and a hook whose timeout CONTINUEs too: nothing is retained.
    let mut hook = Hook::new("drain-hook", TERMINATING).heartbeat_timeout(Duration::from_secs(300));
    hook.default_result = "CONTINUE";
    w.asg.put_hook(GROUP, hook);
    let (_, doc) = doctor(
        &w,
        &[
            "--terminate-hook",
            "drain-hook",
            "--on-unclean-exit",
            "continue",
        ],
    );
    expect(
        &doc,
        "instance-lifecycle-policy",
        "ok",
        "nothing here ABANDONs",
    );
}

#[test]
fn each_denied_permission_fails_naming_its_action() {
    for action in [
        "CompleteLifecycleAction",
        "RecordLifecycleActionHeartbeat",
        "SetInstanceProtection",
    ] {
        let w = world();
        w.asg.set_faults(Faults {
            denied: [action.to_string()].into(),
            ..Faults::default()
        });
        let (code, doc) = doctor(&w, FITS);
        assert_eq!(code, 1, "{action}");
        let name = format!("autoscaling:{action}");
        expect(&doc, &name, "fail", "denied");
        all_ok_but(&doc, &[&name]);
    }
    // Without --asg-name or a tag, the guard needs DescribeAutoScalingInstances to find the group.
    let w = world();
    w.imds.set_tags_enabled(false);
    let (code, doc) = doctor(&w, FITS);
    assert_eq!(code, 0, "{doc:#}");
    expect(&doc, "group", "ok", "from DescribeAutoScalingInstances");
    w.asg.set_faults(Faults {
        denied: ["DescribeAutoScalingInstances".to_string()].into(),
        ..Faults::default()
    });
    let (code, doc) = doctor(&w, FITS);
    assert_eq!(code, 1);
    expect(
        &doc,
        "autoscaling:DescribeAutoScalingInstances",
        "fail",
        "denied",
    );
    expect(
        &doc,
        "metadata-tags",
        "warn",
        "off, and DescribeAutoScalingInstances is denied",
    );
    expect(&doc, "group", "fail", "cannot find the group");
    // The heartbeat interval is read with DescribeLifecycleHooks.
    let w = world();
    w.asg.set_faults(Faults {
        denied: ["DescribeLifecycleHooks".to_string()].into(),
        ..Faults::default()
    });
    let (_, doc) = doctor(&w, &["--terminate-hook", "drain-hook"]);
    expect(
        &doc,
        "autoscaling:DescribeLifecycleHooks",
        "warn",
        "heartbeats every 60s",
    );
}

#[test]
fn a_wrong_group_or_no_group_fails() {
    let w = world();
    w.asg
        .add_instance("other", "i-0fedcba9876543210", "InService");
    let (code, doc) = doctor(
        &w,
        &["--asg-name", "other", "--terminate-hook", "drain-hook"],
    );
    assert_eq!(code, 1);
    expect(&doc, "group", "ok", "other (from --asg-name)");
    expect(
        &doc,
        "instance",
        "fail",
        "is in the group workers, not other",
    );
    let (code, doc) = doctor(
        &w,
        &["--asg-name", "ghost", "--terminate-hook", "drain-hook"],
    );
    assert_eq!(code, 1);
    expect(&doc, "group", "fail", "there is no group ghost");
    // An instance in Standby is outside the hooks' reach.
    let w = world();
    w.asg.add_instance(GROUP, INSTANCE, "Standby");
    let (_, doc) = doctor(&w, FITS);
    expect(&doc, "instance", "warn", "hooks do not apply");
}

#[test]
fn without_credentials_a_guard_with_hooks_fails() {
    let w = world();
    let mut cmd = doctor_command(&w, true, FITS);
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let (code, doc) = run_json(cmd);
    assert_eq!(code, 1);
    expect(
        &doc,
        "credentials",
        "fail",
        "no source of the SDK's chain answered",
    );
    expect(&doc, "group", "warn", "not checked: no credentials");
    assert!(w.asg.calls().is_empty());
}

#[test]
fn never_probes_while_the_instance_waits_in_a_lifecycle_action() {
    let w = world();
    // A scale-out: the launch hook holds the instance in Pending:Wait.
    w.asg.launch(GROUP, INSTANCE);
    assert_eq!(
        w.asg.instance_state(INSTANCE).as_deref(),
        Some("Pending:Wait")
    );
    let (code, doc) = doctor(&w, FITS);
    assert_eq!(code, 0, "{doc:#}");
    for action in [
        "CompleteLifecycleAction",
        "RecordLifecycleActionHeartbeat",
        "SetInstanceProtection",
    ] {
        expect(
            &doc,
            &format!("autoscaling:{action}"),
            "warn",
            "not proven: the instance is in Pending:Wait",
        );
        assert!(calls(&w, action).is_empty(), "{action} was called");
    }
    assert_eq!(
        w.asg.instance_state(INSTANCE).as_deref(),
        Some("Pending:Wait")
    );
    assert!(w.asg.completions().is_empty());
}

#[test]
fn the_health_port_must_be_free_or_held_by_this_guard() {
    let w = world();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").to_string();
    let (code, doc) = doctor(&w, &["--health-listen", &taken]);
    assert_eq!(code, 1);
    expect(&doc, "health-port", "fail", "in use by another program");
    drop(squatter);
    // A running guard of this configuration holds it: that is as it should be.
    let dir = scratch();
    let guard = Guard::start(
        dir.path(),
        [
            "--name",
            "w",
            "--health-listen",
            "127.0.0.1:0",
            "--",
            "sleep",
            "600",
        ],
    );
    let held = guard.health_addr();
    let (code, doc) = doctor(&w, &["--name", "w", "--health-listen", &held]);
    assert_eq!(code, 0, "{doc:#}");
    expect(
        &doc,
        "health-port",
        "ok",
        "held by this configuration's running guard",
    );
    let (code, doc) = doctor(&w, &["--name", "x", "--health-listen", &held]);
    assert_eq!(code, 1);
    expect(&doc, "health-port", "fail", "a guard named w");
}

/// A stand-in `systemctl` that knows one unit, `agent-guard@worker.service`.
fn fake_systemctl(dir: &Path, timeout: &str, kill_mode: &str) -> String {
    let script = dir.join("systemctl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = show ] || exit 1\nif [ \"$2\" = agent-guard@worker.service ]; then\n  printf 'LoadState=loaded\\nTimeoutStopUSec={timeout}\\nKillMode={kill_mode}\\n'\nelse\n  printf 'LoadState=not-found\\nTimeoutStopUSec=1min 30s\\nKillMode=control-group\\n'\nfi\n"
        ),
    )
    .expect("write systemctl");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn the_unit_for_the_config_file_is_held_against_the_drain() {
    let w = world();
    let dir = scratch();
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        "terminate-hook = \"drain-hook\"\ndrain-timeout = \"2m\"\n",
    )
    .expect("config");
    let config = config.to_str().expect("utf-8").to_string();
    for (timeout, kill_mode, expected) in [
        ("3min", "mixed", (0, "ok", "ok")),
        ("2min 35s", "mixed", (0, "warn", "ok")),
        ("1min", "control-group", (1, "fail", "fail")),
    ] {
        let bin = scratch();
        let mut cmd = doctor_command(&w, true, &["--config", &config]);
        cmd.env("PATH", fake_systemctl(bin.path(), timeout, kill_mode));
        let (code, doc) = run_json(cmd);
        assert_eq!(code, expected.0, "{timeout} {kill_mode}: {doc:#}");
        expect(
            &doc,
            "unit-stop-timeout",
            expected.1,
            "agent-guard@worker.service",
        );
        expect(
            &doc,
            "unit-kill-mode",
            expected.2,
            "agent-guard@worker.service",
        );
        // The file's hook is the one checked: the same options as the unit's run.
        expect(&doc, "terminate-hook", "ok", "drain-hook");
    }
}

#[test]
fn a_missing_agent_fails_and_bad_options_cannot_run() {
    let w = world();
    let (code, doc) = doctor(&w, &["--", "/nonexistent/agent"]);
    assert_eq!(code, 1);
    expect(&doc, "command", "fail", "/nonexistent/agent");
    let out = doctor_command(&w, false, &["--stop-timeout", "soon"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--stop-timeout: invalid value `soon`"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// moto, a server we did not write, answers the Describe calls the doctor reads.
#[test]
fn the_describe_calls_work_against_a_real_moto_server() {
    let Some(moto) = crate::support::moto_url() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs a moto server (.ci/run): a skipped test would hide a failure"
        );
        eprintln!("SKIPPED the_describe_calls_work_against_a_real_moto_server: no moto server");
        return;
    };
    let group = format!("doctor-{}", std::process::id());
    let instance = moto_group(&moto, &group);
    let imds = ImdsSim::start().expect("imds sim");
    imds.set_identity(&instance, "us-east-1");
    let mut cmd = command();
    cmd.env_remove("INVOCATION_ID")
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", &moto)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .args([
            "doctor",
            "--json",
            "--imds",
            "on",
            "--imds-endpoint",
            &imds.url(),
        ])
        .args(["--terminate-hook", "drain-hook", "--", "/bin/true"]);
    let started = Instant::now();
    let (_, doc) = run_json(cmd);
    assert!(started.elapsed() < Duration::from_secs(60));
    // DescribeAutoScalingInstances found the group; DescribeAutoScalingGroups has the instance;
    // DescribeLifecycleHooks gave the hook and its 90 s timeout.
    expect(
        &doc,
        "group",
        "ok",
        &format!("{group} (from DescribeAutoScalingInstances)"),
    );
    expect(&doc, "instance", "ok", &format!("{instance} is InService"));
    expect(
        &doc,
        "terminate-hook",
        "ok",
        "drain-hook: HeartbeatTimeout 1m 30s",
    );
    expect(&doc, "heartbeat", "ok", "every 30s (a third of it)");
    expect(&doc, "instance-lifecycle-policy", "ok", "none");
    expect(
        &doc,
        "autoscaling:DescribeAutoScalingInstances",
        "ok",
        "allowed",
    );
    expect(&doc, "autoscaling:DescribeLifecycleHooks", "ok", "allowed");
    // moto 5.2.5 has no CompleteLifecycleAction (an HTML 500): that proves nothing either way,
    // and must never read as a denial.
    for name in [
        "autoscaling:CompleteLifecycleAction",
        "autoscaling:RecordLifecycleActionHeartbeat",
    ] {
        assert_ne!(
            check(&doc, name)["status"],
            "fail",
            "{:#}",
            check(&doc, name)
        );
    }
}

/// A group with one instance and a termination hook, made with boto3; its instance id.
fn moto_group(moto: &str, group: &str) -> String {
    let python = std::env::var("AGENT_GUARD_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    let setup = format!(
        r#"
import boto3
c = boto3.client("autoscaling", endpoint_url="{moto}", region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test")
c.create_launch_configuration(LaunchConfigurationName="{group}-lc", ImageId="ami-12c6146b", InstanceType="t2.micro")
c.create_auto_scaling_group(AutoScalingGroupName="{group}", LaunchConfigurationName="{group}-lc",
                            MinSize=1, MaxSize=1, DesiredCapacity=1, AvailabilityZones=["us-east-1a"])
c.put_lifecycle_hook(LifecycleHookName="drain-hook", AutoScalingGroupName="{group}",
                     LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING", HeartbeatTimeout=90)
print(c.describe_auto_scaling_groups(AutoScalingGroupNames=["{group}"])["AutoScalingGroups"][0]["Instances"][0]["InstanceId"])
"#
    );
    let out = Command::new(&python)
        .args(["-c", &setup])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "moto setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
