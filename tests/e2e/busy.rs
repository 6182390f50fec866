//! Stateful agents: scale-in protection follows the agent's reported load, within the rate limit,
//! released when idle, stale, draining or gone; and the load as CloudWatch EMF lines.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_guard::sim::autoscaling::{Call, Faults};
use serde_json::Value;

use crate::support::{Guard, SOON, World, aws_command, let_time_pass, read, scratch, wait_until};

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";

fn world() -> World {
    World::start(GROUP, INSTANCE, [])
}

fn guard(dir: &Path, w: &World, options: &[&str]) -> Guard {
    let mut cmd = aws_command(&w.imds, &w.asg);
    cmd.args(["--asg-name", GROUP])
        .args(options)
        .args(["--", "sleep", "600"]);
    Guard::spawn(dir, cmd)
}

/// Reports `n` tasks in flight on the control socket, as the agent would.
fn report(guard: &Guard, n: u64) {
    let mut s = UnixStream::connect(&guard.socket).expect("control socket");
    s.write_all(format!("{{\"op\":\"busy\",\"in_flight\":{n}}}\n").as_bytes())
        .expect("write");
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("reply");
    assert!(line.contains("\"ok\":true"), "{line}");
}

fn protection_calls(w: &World) -> Vec<Call> {
    w.asg
        .calls()
        .into_iter()
        .filter(|c| c.action == "SetInstanceProtection")
        .collect()
}

fn wait_started(guard: &Guard) {
    wait_until("protection reads the current state", SOON, || {
        guard
            .log()
            .contains("scale-in protection: the instance's current state")
    });
}

#[test]
fn busy_protects_and_idle_past_the_release_delay_unprotects() {
    let dir = scratch();
    let w = world();
    let mut guard = guard(
        dir.path(),
        &w,
        &[
            "--protect-while-busy",
            "--idle-release",
            "1s",
            "--protect-min-interval",
            "200ms",
        ],
    );
    wait_started(&guard);
    report(&guard, 3);
    wait_until("protected", SOON, || {
        w.asg.protected(INSTANCE) == Some(true)
    });
    assert_eq!(guard.status()["in_flight"], 3);
    report(&guard, 0);
    let idle = Instant::now();
    wait_until("unprotected", SOON, || {
        w.asg.protected(INSTANCE) == Some(false)
    });
    assert!(
        idle.elapsed() >= Duration::from_millis(900),
        "released before the idle delay: {:?}",
        idle.elapsed()
    );
    let calls = protection_calls(&w);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].params["ProtectedFromScaleIn"], "true");
    assert_eq!(calls[0].params["InstanceIds.member.1"], INSTANCE);
    assert_eq!(calls[1].params["ProtectedFromScaleIn"], "false");
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn a_burst_of_flips_makes_at_most_one_call_per_interval() {
    let dir = scratch();
    let w = world();
    let mut guard = guard(
        dir.path(),
        &w,
        &[
            "--protect-while-busy",
            "--idle-release",
            "0s",
            "--protect-min-interval",
            "1s",
        ],
    );
    wait_started(&guard);
    for i in 0..30 {
        report(&guard, i % 2);
        let_time_pass("the flips are spread over 3 s", Duration::from_millis(100));
    }
    // The last flip says busy: settled once protected, with no call for longer than the
    // interval (a call still owed would have come by then).
    wait_until("protected, and no call for 1.2 s", SOON, || {
        w.asg.protected(INSTANCE) == Some(true)
            && protection_calls(&w)
                .last()
                .is_some_and(|c| c.at.elapsed() >= Duration::from_millis(1200))
    });
    let calls = protection_calls(&w);
    assert!(
        !calls.is_empty() && calls.len() <= 5,
        "{} calls in 4 s",
        calls.len()
    );
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(950), "two calls {gap:?} apart");
    }
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn a_stale_report_releases() {
    let dir = scratch();
    let w = world();
    let mut guard = guard(
        dir.path(),
        &w,
        &[
            "--protect-while-busy",
            "--idle-release",
            "0s",
            "--protect-min-interval",
            "200ms",
            "--busy-stale",
            "1s",
        ],
    );
    wait_started(&guard);
    report(&guard, 5);
    wait_until("protected", SOON, || {
        w.asg.protected(INSTANCE) == Some(true)
    });
    // No more reports: a hung agent must not pin the instance.
    wait_until("released once stale", SOON, || {
        w.asg.protected(INSTANCE) == Some(false)
    });
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn a_drain_releases_at_once_and_exit_leaves_the_instance_unprotected() {
    let dir = scratch();
    let w = world();
    let mut guard = guard(
        dir.path(),
        &w,
        &[
            "--protect-while-busy",
            "--protect-min-interval",
            "10m",
            "--drain-signal",
            "USR2",
            "--drain-timeout",
            "10m",
        ],
    );
    wait_started(&guard);
    report(&guard, 2);
    wait_until("protected", SOON, || {
        w.asg.protected(INSTANCE) == Some(true)
    });
    // `sleep` dies of the drain signal; the release must not wait for the 10-minute interval.
    let (code, _, _) = guard.ctl(&["drain"]);
    assert_eq!(code, 0);
    let _ = guard.code();
    assert_eq!(w.asg.protected(INSTANCE), Some(false), "{}", guard.log());
}

#[test]
fn a_restarted_guard_reads_the_protection_and_does_not_call_again() {
    let dir = scratch();
    let w = world();
    w.asg.set_protected(INSTANCE, true);
    let mut guard = guard(
        dir.path(),
        &w,
        &["--protect-while-busy", "--protect-min-interval", "200ms"],
    );
    wait_started(&guard);
    report(&guard, 4);
    assert!(
        w.asg
            .calls()
            .iter()
            .any(|c| c.action == "DescribeAutoScalingInstances")
    );
    wait_until("the guard knows it is protected", SOON, || {
        guard.status()["lifecycle"]["protected_from_scale_in"] == true
    });
    let_time_pass(
        "no SetInstanceProtection comes (the interval is 200ms)",
        Duration::from_millis(1000),
    );
    assert!(
        protection_calls(&w).is_empty(),
        "{:?}",
        protection_calls(&w)
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn throttling_is_retried() {
    let dir = scratch();
    let w = world();
    let mut guard = guard(
        dir.path(),
        &w,
        // No target-group lookup at start to take one of the throttled answers.
        &[
            "--protect-while-busy",
            "--protect-min-interval",
            "100ms",
            "--target-groups",
            "off",
        ],
    );
    wait_started(&guard);
    w.asg.set_faults(Faults {
        throttle: 2,
        ..Faults::default()
    });
    report(&guard, 1);
    wait_until("protected after the throttling", SOON, || {
        w.asg.protected(INSTANCE) == Some(true)
    });
    let outcomes: Vec<_> = protection_calls(&w)
        .iter()
        .map(|c| c.error.clone().unwrap_or_else(|| c.status.to_string()))
        .collect();
    assert_eq!(outcomes, ["Throttling", "Throttling", "200"]);
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn emf_lines_follow_the_documented_structure() {
    let dir = scratch();
    let w = world();
    let emf = dir.path().join("metrics.emf");
    let mut guard = guard(
        dir.path(),
        &w,
        &[
            "--protect-while-busy",
            "--metrics-emf",
            emf.to_str().expect("utf-8"),
            "--metrics-interval",
            "200ms",
            "--protect-min-interval",
            "100ms",
        ],
    );
    wait_started(&guard);
    report(&guard, 7);
    let wanted =
        |l: &&str| l.contains("\"InFlight\":7") && l.contains("\"ProtectedFromScaleIn\":1");
    wait_until("a line with the load and the protection", SOON, || {
        read(&emf).lines().any(|l| wanted(&l))
    });
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
    let text = read(&emf);
    let line = text.lines().rev().find(wanted).expect("a line");
    let doc: Value = serde_json::from_str(line).expect("one JSON object per line");
    // The _aws metadata block.
    let aws = &doc["_aws"];
    assert!(
        aws["Timestamp"]
            .as_u64()
            .is_some_and(|t| t > 1_700_000_000_000),
        "{aws}"
    );
    let directives = aws["CloudWatchMetrics"]
        .as_array()
        .expect("CloudWatchMetrics");
    assert_eq!(directives.len(), 1);
    let d = &directives[0];
    assert_eq!(d["Namespace"], "AgentGuard");
    // Every dimension and metric named in the directive is a top-level member.
    for set in d["Dimensions"].as_array().expect("Dimensions") {
        for name in set.as_array().expect("a dimension set") {
            let name = name.as_str().expect("a name");
            assert!(
                doc[name].is_string(),
                "dimension {name} missing at top level"
            );
        }
    }
    let metrics = d["Metrics"].as_array().expect("Metrics");
    assert!(metrics.len() <= 100);
    for m in metrics {
        let name = m["Name"].as_str().expect("Name");
        assert!(m["Unit"].is_string());
        assert!(doc[name].is_number(), "metric {name} missing at top level");
    }
    assert_eq!(doc["AutoScalingGroupName"], GROUP);
    assert_eq!(doc["InstanceId"], INSTANCE);
    assert_eq!(doc["ProtectedFromScaleIn"], 1);
    assert_eq!(doc["Ready"], 1);
}
