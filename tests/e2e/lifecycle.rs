//! Lifecycle actions end to end, with the simulated IMDS and Auto Scaling API and the real AWS
//! SDK: heartbeats while the agent drains, the termination hook completed strictly after the
//! agent exited, the launch hook completed only once the agent is ready, and the error paths.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_guard::sim::autoscaling::{Call, Faults, Hook, LAUNCHING, TERMINATING};
use agent_guard::sim::imds::ImdsSim;

use crate::support::{
    Guard, SOON, World, armed_shell, aws_command, command, first_time, fixture, json_lines,
    let_time_pass, scratch, wait_armed, wait_until,
};

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";

/// CLOCK_MONOTONIC in seconds, the clock the fixture agents log with.
fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Maps an `Instant` (the sim's call times) onto CLOCK_MONOTONIC seconds.
struct Clock {
    instant: Instant,
    mono: f64,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            mono: monotonic(),
        }
    }
    fn mono(&self, at: Instant) -> f64 {
        if at >= self.instant {
            self.mono + (at - self.instant).as_secs_f64()
        } else {
            self.mono - (self.instant - at).as_secs_f64()
        }
    }
}

fn world(terminate: Option<Hook>, launch: Option<Hook>) -> World {
    World::start(GROUP, INSTANCE, [terminate, launch].into_iter().flatten())
}

fn terminate_hook() -> Hook {
    Hook::new("drain-hook", TERMINATING).heartbeat_timeout(Duration::from_secs(30))
}

fn guard(dir: &Path, w: &World, options: &[&str], agent: &[&str]) -> Guard {
    let mut cmd = aws_command(&w.imds, &w.asg);
    cmd.args(options).arg("--").args(agent);
    Guard::spawn(dir, cmd)
}

fn wait_lifecycle_ready(guard: &Guard) {
    wait_until("lifecycle setup", SOON, || {
        guard.log().contains("lifecycle hooks ready")
    });
}

/// A guard of the termination hook (heartbeats every 300 ms) around the socket agent, which
/// drains for `drained_after` seconds once told; returned ready and subscribed.
fn draining_guard(dir: &Path, w: &World, log: &Path, drained_after: &str) -> Guard {
    let guard = guard(
        dir,
        w,
        &[
            "--terminate-hook",
            "drain-hook",
            "--asg-name",
            GROUP,
            "--heartbeat-interval",
            "300ms",
            "--drain-timeout",
            "10m",
        ],
        &[
            fixture("socket_agent.py").to_str().expect("utf-8"),
            log.to_str().expect("utf-8"),
            "--drained-after",
            drained_after,
        ],
    );
    wait_lifecycle_ready(&guard);
    wait_until("subscribed", SOON, || guard.status()["subscribers"] == 1);
    guard
}

#[test]
fn scale_in_heartbeats_while_draining_and_completes_continue_after_the_agent_exits() {
    let dir = scratch();
    let w = world(Some(terminate_hook()), None);
    let log = dir.path().join("agent.log");
    let mut guard = draining_guard(dir.path(), &w, &log, "1.5");
    let clock = Clock::now();
    w.asg.terminate(GROUP, INSTANCE);
    w.imds.set_lifecycle_state(Some("Terminated"));
    assert_eq!(guard.code(), 0, "the agent's own status: {}", guard.log());

    let completes = w.calls("CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "{completes:?}");
    let complete = &completes[0];
    assert_eq!(complete.status, 200);
    assert_eq!(complete.params["LifecycleActionResult"], "CONTINUE");
    assert_eq!(complete.params["LifecycleHookName"], "drain-hook");
    assert_eq!(complete.params["InstanceId"], INSTANCE);
    assert_eq!(complete.params["AutoScalingGroupName"], GROUP);
    let heartbeats = w.calls("RecordLifecycleActionHeartbeat");
    assert!(
        heartbeats.len() >= 2,
        "heartbeats while the 1.5 s drain ran: {heartbeats:?}"
    );
    assert!(
        heartbeats
            .iter()
            .all(|h| h.status == 200 && h.at < complete.at)
    );
    // Strictly after the agent's exit marker (its SIGTERM handler runs just before it exits).
    let entries = json_lines(&log);
    let exit_marker =
        first_time(&entries, |e| e["signal"] == "SIGTERM").expect("the agent's exit marker");
    assert!(
        clock.mono(complete.at) > exit_marker,
        "completed {:.3}s before the agent exited",
        exit_marker - clock.mono(complete.at)
    );
    assert_eq!(
        w.asg.instance_state(INSTANCE).as_deref(),
        Some("Terminating:Proceed")
    );
    assert_eq!(w.asg.completions().len(), 1);
    assert!(
        w.asg.completions()[0].by_call,
        "completed by the guard, not by the timeout"
    );
}

#[test]
fn an_agent_that_ignores_sigterm_gets_the_unclean_result_after_sigkill() {
    for (option, want) in [(None, "ABANDON"), (Some("continue"), "CONTINUE")] {
        let dir = scratch();
        let w = world(Some(terminate_hook()), None);
        let log = dir.path().join("signals.log");
        let mut options = vec![
            "--terminate-hook",
            "drain-hook",
            "--asg-name",
            GROUP,
            "--stop-timeout",
            "500ms",
        ];
        if let Some(o) = option {
            options.extend(["--on-unclean-exit", o]);
        }
        let mut guard = guard(
            dir.path(),
            &w,
            &options,
            &[
                fixture("recorder.py").to_str().expect("utf-8"),
                log.to_str().expect("utf-8"),
                "--ignore-term",
            ],
        );
        wait_lifecycle_ready(&guard);
        // Its SIGTERM handler must be in place, or SIGTERM alone would end it (143).
        wait_until("the agent is up", SOON, || {
            dir.path().join("signals.log.ready").exists()
        });
        w.asg.terminate(GROUP, INSTANCE);
        w.imds.set_lifecycle_state(Some("Terminated"));
        assert_eq!(guard.code(), 137, "{}", guard.log());
        let completes = w.calls("CompleteLifecycleAction");
        assert_eq!(completes.len(), 1, "{completes:?}");
        assert_eq!(
            completes[0].params["LifecycleActionResult"], want,
            "{option:?}"
        );
    }
}

#[test]
fn the_launch_hook_is_completed_only_after_ready_1() {
    let dir = scratch();
    let w = world(
        None,
        Some(Hook::new("launch-hook", LAUNCHING).heartbeat_timeout(Duration::from_secs(60))),
    );
    w.asg.launch(GROUP, INSTANCE);
    assert_eq!(
        w.asg.instance_state(INSTANCE).as_deref(),
        Some("Pending:Wait")
    );
    let log = dir.path().join("agent.log");
    let trigger = dir.path().join("go");
    let mut guard = guard(
        dir.path(),
        &w,
        &["--launch-hook", "launch-hook", "--ready-on", "notify"],
        &[
            fixture("notify_agent.py").to_str().expect("utf-8"),
            log.to_str().expect("utf-8"),
            "--ready-on-file",
            trigger.to_str().expect("utf-8"),
        ],
    );
    wait_lifecycle_ready(&guard);
    let_time_pass(
        "no completion comes while the agent is not ready",
        Duration::from_millis(800),
    );
    assert!(
        w.calls("CompleteLifecycleAction").is_empty(),
        "no completion before the agent is ready"
    );
    let clock = Clock::now();
    std::fs::write(&trigger, "").expect("trigger");
    wait_until("the launch hook completes", SOON, || {
        !w.calls("CompleteLifecycleAction").is_empty()
    });
    let complete = &w.calls("CompleteLifecycleAction")[0];
    assert_eq!(complete.params["LifecycleActionResult"], "CONTINUE");
    assert_eq!(complete.params["LifecycleHookName"], "launch-hook");
    let ready_sent = first_time(&json_lines(&log), |e| {
        e["sent"].as_str().is_some_and(|s| s.starts_with("READY=1"))
    })
    .expect("READY=1 sent");
    assert!(
        clock.mono(complete.at) > ready_sent,
        "completed before READY=1"
    );
    assert_eq!(w.asg.instance_state(INSTANCE).as_deref(), Some("InService"));
    wait_until("status shows it", SOON, || {
        guard.status()["lifecycle"]["launch_hook"]["state"] == "completed"
    });
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
}

#[test]
fn the_launch_hook_is_abandoned_when_the_agent_is_not_ready_in_time() {
    let dir = scratch();
    let w = world(None, Some(Hook::new("launch-hook", LAUNCHING)));
    w.asg.launch(GROUP, INSTANCE);
    let mut guard = guard(
        dir.path(),
        &w,
        &[
            "--launch-hook",
            "launch-hook",
            "--ready-on",
            "notify",
            "--ready-timeout",
            "1s",
        ],
        &["sleep", "600"],
    );
    wait_until("the launch hook is abandoned", SOON, || {
        !w.calls("CompleteLifecycleAction").is_empty()
    });
    assert_eq!(
        w.calls("CompleteLifecycleAction")[0].params["LifecycleActionResult"],
        "ABANDON"
    );
    assert!(
        guard
            .log()
            .contains("did not become ready within --ready-timeout"),
        "{}",
        guard.log()
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn throttling_is_retried_until_the_completion_succeeds() {
    let dir = scratch();
    let w = world(Some(terminate_hook()), None);
    let mut guard = guard(
        dir.path(),
        &w,
        &[
            "--terminate-hook",
            "drain-hook",
            "--asg-name",
            GROUP,
            "--heartbeat-interval",
            "10s",
            // No target-group lookup at start to take one of the throttled answers.
            "--target-groups",
            "off",
        ],
        &["sleep", "600"],
    );
    wait_lifecycle_ready(&guard);
    // The hook's timeout is read in the background: the throttling is meant for the completion.
    wait_until("the hook's timeout read", SOON, || {
        w.calls("DescribeLifecycleHooks")
            .iter()
            .any(|c| c.status == 200)
    });
    w.asg.terminate(GROUP, INSTANCE);
    w.asg.set_faults(Faults {
        throttle: 2,
        ..Faults::default()
    });
    w.imds.set_lifecycle_state(Some("Terminated"));
    // Full jitter under ceilings of 3 s, then 9 s: at most 12 s of backoff, and the bound's slack.
    let status = guard.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(143), "{}", guard.log());
    let completes = w.calls("CompleteLifecycleAction");
    let outcomes: Vec<_> = completes
        .iter()
        .map(|c| c.error.clone().unwrap_or_else(|| c.status.to_string()))
        .collect();
    assert_eq!(
        outcomes,
        ["Throttling", "Throttling", "200"],
        "{completes:?}"
    );
    assert!(completes.windows(2).all(|p| p[1].at > p[0].at));
}

#[test]
fn no_active_lifecycle_action_is_retried_for_a_window_then_given_up() {
    let dir = scratch();
    // The group holds no wait state for the instance: every completion is a ValidationError.
    let w = world(Some(terminate_hook()), None);
    let started = Instant::now();
    let mut guard = guard(
        dir.path(),
        &w,
        &[
            "--terminate-hook",
            "drain-hook",
            "--asg-name",
            GROUP,
            "--heartbeat-interval",
            "300ms",
        ],
        &[
            "sh",
            "-c",
            "trap 'exit 7' TERM; while :; do sleep 0.05; done",
        ],
    );
    wait_lifecycle_ready(&guard);
    w.imds.set_lifecycle_state(Some("Terminated"));
    assert_eq!(
        guard.code(),
        7,
        "the agent's status, after giving up: {}",
        guard.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "within a bound"
    );
    let completes = w.calls("CompleteLifecycleAction");
    assert!(completes.len() >= 2, "retried: {completes:?}");
    assert!(
        completes
            .iter()
            .all(|c| c.error.as_deref() == Some("ValidationError"))
    );
    let log = guard.log();
    assert_eq!(
        log.matches("nothing to complete").count(),
        1,
        "logged once:\n{log}"
    );
}

#[test]
fn the_group_is_found_by_tag_and_by_api() {
    // By the instance metadata tag.
    let dir = scratch();
    let w = world(Some(terminate_hook()), None);
    w.imds.set_tag("aws:autoscaling:groupName", Some(GROUP));
    let mut by_tag = guard(
        dir.path(),
        &w,
        &["--terminate-hook", "drain-hook"],
        &["sleep", "600"],
    );
    wait_lifecycle_ready(&by_tag);
    assert_eq!(by_tag.status()["lifecycle"]["group"], GROUP);
    assert!(
        w.calls("DescribeAutoScalingInstances").is_empty(),
        "the tag made the call needless"
    );
    // A third of the hook's 30 s heartbeat timeout, once read (in the background).
    wait_until(
        "the heartbeat cadence from the hook's timeout",
        SOON,
        || by_tag.status()["lifecycle"]["heartbeat_interval_s"] == 10.0,
    );
    by_tag.signal(libc::SIGTERM);
    assert_eq!(by_tag.code(), 143);

    // By DescribeAutoScalingInstances.
    let dir = scratch();
    let w = world(Some(terminate_hook()), None);
    let mut by_api = guard(
        dir.path(),
        &w,
        &["--terminate-hook", "drain-hook"],
        &["sleep", "600"],
    );
    wait_lifecycle_ready(&by_api);
    assert_eq!(by_api.status()["lifecycle"]["group"], GROUP);
    let describe = w.calls("DescribeAutoScalingInstances");
    assert_eq!(describe.len(), 1);
    assert_eq!(describe[0].params["InstanceIds.member.1"], INSTANCE);
    by_api.signal(libc::SIGTERM);
    assert_eq!(by_api.code(), 143);
}

#[test]
fn a_missing_permission_is_one_line_naming_the_iam_action() {
    let dir = scratch();
    let w = world(Some(terminate_hook()), None);
    w.asg.set_faults(Faults {
        denied: ["CompleteLifecycleAction".to_string()]
            .into_iter()
            .collect(),
        ..Faults::default()
    });
    let mut guard = guard(
        dir.path(),
        &w,
        &["--terminate-hook", "drain-hook", "--asg-name", GROUP],
        &["sleep", "600"],
    );
    wait_lifecycle_ready(&guard);
    w.asg.terminate(GROUP, INSTANCE);
    w.imds.set_lifecycle_state(Some("Terminated"));
    assert_eq!(guard.code(), 143);
    let log = guard.log();
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("lacks autoscaling:CompleteLifecycleAction"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert_eq!(
        w.calls("CompleteLifecycleAction").len(),
        1,
        "a denial is not retried"
    );
}

#[test]
fn a_spot_interruption_completes_the_hook_when_the_group_holds_one_and_stays_quiet_when_not() {
    // Capacity rebalancing put the instance in Terminating:Wait.
    let dir = scratch();
    let w = world(Some(terminate_hook()), None);
    let mut guard1 = guard(
        dir.path(),
        &w,
        &[
            "--terminate-hook",
            "drain-hook",
            "--asg-name",
            GROUP,
            "--spot-margin",
            "1s",
        ],
        &["sleep", "600"],
    );
    wait_lifecycle_ready(&guard1);
    w.asg.terminate(GROUP, INSTANCE);
    let notice =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(60))
            .to_string();
    w.imds.post_spot_interruption("terminate", &notice);
    assert_eq!(guard1.code(), 143);
    assert_eq!(
        w.calls("CompleteLifecycleAction").first().map(|c| c.status),
        Some(200)
    );

    // No wait state: the ValidationError is expected, and logged quietly.
    let dir = scratch();
    let w = world(Some(terminate_hook()), None);
    let mut guard2 = guard(
        dir.path(),
        &w,
        &[
            "--terminate-hook",
            "drain-hook",
            "--asg-name",
            GROUP,
            "--heartbeat-interval",
            "300ms",
        ],
        &["sleep", "600"],
    );
    wait_lifecycle_ready(&guard2);
    w.imds.post_spot_interruption("terminate", &notice);
    assert_eq!(guard2.code(), 143);
    let log = guard2.log();
    assert!(log.contains("as expected for a spot interruption"), "{log}");
    assert!(!log.contains("WARN  lifecycle: no active"), "{log}");
}

#[test]
fn status_and_metrics_show_the_hook() {
    let dir = scratch();
    let armed = dir.path().join("armed");
    let w = world(Some(terminate_hook()), None);
    let mut cmd_guard = guard(
        dir.path(),
        &w,
        &[
            "--terminate-hook",
            "drain-hook",
            "--asg-name",
            GROUP,
            "--health-listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "200ms",
            "--drain-signal",
            "USR1",
            "--drain-timeout",
            "1s",
        ],
        &[
            "sh",
            "-c",
            &armed_shell("trap '' USR1; trap 'exit 0' TERM", &armed),
        ],
    );
    wait_lifecycle_ready(&cmd_guard);
    wait_armed(&armed);
    let addr = cmd_guard.health_addr();
    w.asg.terminate(GROUP, INSTANCE);
    w.imds.set_lifecycle_state(Some("Terminated"));
    wait_until("a heartbeat", SOON, || {
        cmd_guard.status()["lifecycle"]["terminate_hook"]["heartbeats"].as_u64() >= Some(1)
    });
    let status = cmd_guard.status();
    assert_eq!(
        status["lifecycle"]["terminate_hook"]["state"], "heartbeating",
        "{status}"
    );
    let metrics = crate::support::http(&addr, "GET", "/metrics").2;
    assert!(metrics.contains("agent_guard_lifecycle_calls_total{action=\"RecordLifecycleActionHeartbeat\",outcome=\"ok\"}"), "{metrics}");
    assert_eq!(cmd_guard.code(), 0);
}

/// moto, a server we did not write, checks the SDK wiring for the calls it implements.
#[test]
fn the_sdk_wiring_works_against_a_real_moto_server() {
    let Some(moto) = crate::support::moto_url() else {
        crate::support::require(false, "no moto server (.ci/run starts one)");
        return;
    };
    let python = std::env::var("AGENT_GUARD_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    // A group with one instance and a termination hook, made with boto3 (moto's own client).
    let group = format!("moto-{}", std::process::id());
    let setup = format!(
        r#"
import boto3
c = boto3.client("autoscaling", endpoint_url="{moto}", region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test")
ec2 = boto3.client("ec2", endpoint_url="{moto}", region_name="us-east-1",
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
    let instance = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let imds = ImdsSim::start().expect("imds sim");
    imds.set_identity(&instance, "us-east-1");
    let dir = scratch();
    let mut cmd = command();
    cmd.env("AWS_ENDPOINT_URL_AUTO_SCALING", &moto)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .args([
            "--imds",
            "on",
            "--imds-endpoint",
            &imds.url(),
            "--imds-poll",
            "200ms",
            "--terminate-hook",
            "drain-hook",
            "--",
            "sleep",
            "600",
        ]);
    let mut guard = Guard::spawn(dir.path(), cmd);
    wait_lifecycle_ready(&guard);
    // The hook's timeout is read in the background (nothing waits for it): wait for that too.
    wait_until("DescribeLifecycleHooks read", SOON, || {
        guard.log().contains("read the hook's heartbeat timeout")
    });
    let status = guard.status();
    // DescribeAutoScalingInstances found the group; DescribeLifecycleHooks gave 90 s / 3.
    assert_eq!(status["lifecycle"]["group"], group.as_str(), "{status}");
    assert_eq!(
        status["lifecycle"]["heartbeat_interval_s"], 30.0,
        "{status}"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

/// When the group entered `state` for the instance.
fn entered(w: &World, state: &str) -> Option<Instant> {
    w.asg
        .transitions()
        .into_iter()
        .find(|t| t.instance == INSTANCE && t.state == state)
        .map(|t| t.at)
}

#[test]
fn a_wait_state_later_than_the_agent_is_waited_for_and_shown() {
    let dir = scratch();
    let w = world(Some(terminate_hook()), None);
    w.asg
        .set_deregistration_delay(GROUP, Duration::from_secs(3));
    let mut guard = guard(
        dir.path(),
        &w,
        &[
            "--terminate-hook",
            "drain-hook",
            "--asg-name",
            GROUP,
            "--health-listen",
            "127.0.0.1:0",
        ],
        &["sleep", "600"],
    );
    wait_lifecycle_ready(&guard);
    let addr = guard.health_addr();
    w.asg.terminate(GROUP, INSTANCE);
    w.imds.set_lifecycle_state(Some("Terminated"));
    // The agent is gone at once; the guard stays, and says what it waits for.
    wait_until("the guard waits for the wait state", SOON, || {
        guard.status()["lifecycle"]["waiting_for"]["what"] == "wait-state"
    });
    let status = guard.status();
    assert_eq!(status["phase"], "exited", "{status}");
    assert_eq!(
        status["lifecycle"]["terminate_hook"]["state"], "awaiting",
        "{status}"
    );
    let (code, text, _) = guard.ctl(&["status"]);
    assert_eq!(code, 0);
    let line = text
        .lines()
        .find(|l| l.starts_with("lifecycle hook drain-hook: waiting for Terminating:Wait since "))
        .unwrap_or_else(|| panic!("ctl status says what it waits for:\n{text}"));
    assert!(
        line.ends_with("deregistration in progress (Terminating)"),
        "{line}"
    );
    let metrics = crate::support::http(&addr, "GET", "/metrics").2;
    assert!(
        metrics.contains("agent_guard_lifecycle_waiting_seconds{for=\"wait-state\"}"),
        "{metrics}"
    );
    assert!(
        entered(&w, "Terminating:Wait").is_none(),
        "still deregistering"
    );
    assert_eq!(guard.code(), 143, "the agent's status: {}", guard.log());

    let began = entered(&w, "Terminating:Wait").expect("the wait state began");
    let ok: Vec<Call> = w
        .calls("CompleteLifecycleAction")
        .into_iter()
        .filter(|c| c.status == 200)
        .collect();
    assert_eq!(ok.len(), 1, "completed once: {ok:?}");
    assert!(ok[0].at >= began, "completed in the wait state");
    assert!(
        ok[0].at - began < Duration::from_secs(13),
        "within a probe interval of the wait state: {:?}",
        ok[0].at - began
    );
    assert!(
        w.calls("CompleteLifecycleAction")
            .iter()
            .filter(|c| c.status != 200)
            .all(|c| c.at < began && c.error.as_deref() == Some("ValidationError")),
        "refused only before the wait state"
    );
    let log = guard.log();
    assert_eq!(
        log.matches("hook completed, once the instance was in its wait state; the guard exits with the agent's status").count(),
        1,
        "one line saying how it ended:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("lifecycle:")),
        "no warning for an expected wait:\n{log}"
    );
}

#[test]
fn heartbeats_start_only_once_the_wait_state_begins() {
    let dir = scratch();
    let w = world(Some(terminate_hook()), None);
    w.asg
        .set_deregistration_delay(GROUP, Duration::from_millis(1500));
    let log = dir.path().join("agent.log");
    let mut guard = draining_guard(dir.path(), &w, &log, "3.5");
    let clock = Clock::now();
    w.asg.terminate(GROUP, INSTANCE);
    w.imds.set_lifecycle_state(Some("Terminated"));
    assert_eq!(guard.code(), 0, "{}", guard.log());

    let began = entered(&w, "Terminating:Wait").expect("the wait state began");
    let heartbeats = w.calls("RecordLifecycleActionHeartbeat");
    assert!(
        heartbeats.len() >= 2,
        "heartbeats in the 2 s between the wait state and the end of the drain: {heartbeats:?}"
    );
    assert!(
        heartbeats.iter().all(|h| h.at >= began && h.status == 200),
        "no heartbeat before the wait state, none refused: {heartbeats:?}"
    );
    assert!(
        heartbeats[0].at - began < Duration::from_secs(2),
        "the first heartbeat within a probe of the wait state"
    );
    let looks = w.calls("DescribeAutoScalingInstances");
    assert!(
        looks.iter().any(|l| l.at < began),
        "the state was looked at while deregistering: {looks:?}"
    );
    let completes = w.calls("CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "{completes:?}");
    assert_eq!(completes[0].status, 200);
    let exit_marker = first_time(&json_lines(&log), |e| e["signal"] == "SIGTERM")
        .expect("the agent's exit marker");
    assert!(clock.mono(completes[0].at) > exit_marker);
}

#[test]
fn a_stop_signal_ends_the_wait_for_the_wait_state() {
    let dir = scratch();
    let w = world(Some(terminate_hook()), None);
    w.asg
        .set_deregistration_delay(GROUP, Duration::from_secs(300));
    let mut guard = guard(
        dir.path(),
        &w,
        &["--terminate-hook", "drain-hook", "--asg-name", GROUP],
        &["sleep", "600"],
    );
    wait_lifecycle_ready(&guard);
    w.asg.terminate(GROUP, INSTANCE);
    w.imds.set_lifecycle_state(Some("Terminated"));
    wait_until("the guard waits for the wait state", SOON, || {
        guard.status()["lifecycle"]["waiting_for"]["what"] == "wait-state"
    });
    let stopped = Instant::now();
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143, "the agent's status: {}", guard.log());
    assert!(stopped.elapsed() < Duration::from_secs(10));
    assert!(
        guard.log().contains("stopped while the hook work waited"),
        "{}",
        guard.log()
    );
    assert!(
        w.calls("CompleteLifecycleAction")
            .iter()
            .all(|c| c.status != 200),
        "nothing completed in a wait state that never came"
    );
}

/// An operator's drain that a scale-in overtakes: the drain now ends the instance, so the
/// reason shown is the one that decides (`scale-in`), and the termination hook is completed
/// CONTINUE once the agent has exited.
#[test]
fn an_operator_drain_upgraded_by_a_scale_in_completes_the_hook_and_shows_scale_in() {
    let dir = scratch();
    let w = world(Some(terminate_hook()), None);
    let log = dir.path().join("agent.log");
    let mut guard = draining_guard(dir.path(), &w, &log, "6");
    let (code, out, err) = guard.ctl(&["drain"]);
    assert_eq!(code, 0, "ctl drain: {out} {err}");
    wait_until("the operator's drain", SOON, || {
        guard.status()["drain"]["reason"] == "operator"
    });
    let clock = Clock::now();
    w.asg.terminate(GROUP, INSTANCE);
    w.imds.set_lifecycle_state(Some("Terminated"));
    // Watched while the agent still drains (for 6 s): the reason shown there is the one that
    // decides, not the operator's that came first.
    let mut shown = serde_json::Value::Null;
    wait_until("the scale-in seen by the guard", SOON, || {
        let status = guard.status();
        if status["phase"] == "draining" {
            shown = status["drain"]["reason"].clone();
        }
        status["imds"]["lifecycle_state"] == "Terminated" && status["phase"] == "draining"
            || status["phase"] != "draining"
    });
    wait_until("the drain shown as the scale-in's", SOON, || {
        let status = guard.status();
        if status["phase"] == "draining" {
            shown = status["drain"]["reason"].clone();
        }
        shown == "scale-in" || status["phase"] != "draining"
    });
    assert_eq!(shown, "scale-in", "the reason that decides, while draining");
    assert_eq!(guard.code(), 0, "the agent's own status: {}", guard.log());

    let completes = w.calls("CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "{completes:?}\n{}", guard.log());
    assert_eq!(completes[0].params["LifecycleActionResult"], "CONTINUE");
    let entries = json_lines(&log);
    let exit_marker =
        first_time(&entries, |e| e["signal"] == "SIGTERM").expect("the agent's exit marker");
    assert!(
        clock.mono(completes[0].at) > exit_marker,
        "completed before the agent exited"
    );
    assert!(w.asg.completions()[0].by_call, "completed by the guard");
}
