//! A crash loop that ends with the instance marked Unhealthy takes it out of its target groups
//! at once, before the guard waits for the group to terminate it (issue 26): the load balancer
//! stops sending to a dead agent instead of waiting for its health checks to fail. Nothing of it
//! reaches an agent as a drain (none is left). While the guard waits, `/livez` stays 200: it is
//! at work, and a liveness probe must not restart it. Refused or with no target group, one line
//! says so and the hook is not held; a guard that works with its group only after a crash loop
//! reads its target groups only then.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_guard::sim::autoscaling::{Hook, TERMINATING};

use crate::support::{
    Guard, LbWorld, SOON, aws_command, fixture, http, let_time_pass, scratch, wait_until,
};

const GROUP: &str = "web";
const INSTANCE: &str = "i-0123456789abcdef0";

type World = LbWorld;

/// A group with a termination hook whose instance is a healthy target of one target group with
/// a 2 s deregistration delay, or of none (`in_target_group` false).
fn world(in_target_group: bool) -> World {
    let hook = Hook::new("drain-hook", TERMINATING).heartbeat_timeout(Duration::from_secs(60));
    LbWorld::start(
        (GROUP, INSTANCE),
        hook,
        Duration::from_secs(2),
        in_target_group,
    )
}

/// Restarts fast, and three failed starts within a minute are a crash loop; `unhealthy` is
/// the default `--on-crash-loop`.
const CRASH_LOOP: &[&str] = &[
    "--restart",
    "on-failure",
    "--restart-delay",
    "50ms",
    "--restart-max-delay",
    "100ms",
    "--crash-loop",
    "3/1m",
    "--on-unclean-exit",
    "continue",
    "--health-listen",
    "127.0.0.1:0",
    "--asg-name",
    GROUP,
];

/// A guard around the fixture agent doing `steps` at its starts (`fail` ×3 is a crash loop).
fn guard(dir: &Path, w: &World, options: &[&str], steps: &[&str]) -> (Guard, PathBuf) {
    let log = dir.join("agent.log");
    let mut cmd = aws_command(&w.imds, &w.asg);
    cmd.env("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", w.elb.url())
        .args(CRASH_LOOP)
        .args(options)
        .arg("--")
        .arg(fixture("restarting_agent.sh"))
        .arg(&log)
        .args(steps);
    (Guard::spawn(dir, cmd), log)
}

/// With the termination hook: waits until the instance is marked Unhealthy and the guard says
/// it waits for the group to terminate it.
fn crash_looped_with_hook(dir: &Path, w: &World) -> Guard {
    let (guard, _) = guard(
        dir,
        w,
        &["--terminate-hook", "drain-hook"],
        &["fail", "fail", "fail"],
    );
    wait_until("marked Unhealthy", SOON, || {
        !w.asg_calls("SetInstanceHealth").is_empty()
    });
    wait_until("the guard waits for the termination", SOON, || {
        guard.status()["lifecycle"]["waiting_for"]["what"] == "termination"
    });
    guard
}

/// The group terminates the instance: the hook waits, IMDS says so; the guard completes the
/// hook, once, and exits with the agent's last status.
fn scale_in_and_complete(w: &World, guard: &mut Guard) -> Instant {
    w.asg.terminate(GROUP, INSTANCE);
    w.imds.set_lifecycle_state(Some("Terminated"));
    assert_eq!(guard.code(), 1, "the agent's last status: {}", guard.log());
    let completes = w.asg_calls("CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "{completes:?}\n{}", guard.log());
    assert_eq!(completes[0].params["LifecycleActionResult"], "CONTINUE");
    assert!(w.asg.completions()[0].by_call, "not left to the timeout");
    completes[0].at
}

#[test]
fn a_crash_loop_marked_unhealthy_deregisters_the_instance_before_the_guard_waits() {
    let dir = scratch();
    let w = world(true);
    let mut guard = crash_looped_with_hook(dir.path(), &w);
    wait_until("deregistered", SOON, || {
        !w.elb_calls("DeregisterTargets").is_empty()
    });
    let deregistered = w.elb_calls("DeregisterTargets");
    assert_eq!(deregistered.len(), 1, "{deregistered:?}");
    assert_eq!(deregistered[0].status, 200, "{deregistered:?}");
    assert_eq!(deregistered[0].params["Targets.member.1.Id"], INSTANCE);
    let marked = w.asg_calls("SetInstanceHealth");
    assert!(marked[0].at < deregistered[0].at, "marked Unhealthy first");
    assert!(guard.child.try_wait().expect("try_wait").is_none());

    // The status says why, and the wait for the load balancer ends in the log and the status.
    wait_until("the load balancer let go", SOON, || {
        guard.status()["load_balancer"]["deregistration"]["outcome"] == "done"
    });
    let status = guard.status();
    let run = &status["load_balancer"]["deregistration"];
    assert_eq!(run["reason"], "crash-loop", "{status}");
    assert_eq!(w.elb.target_state(&w.arn, INSTANCE), None, "{status}");
    let text = guard.log();
    assert!(
        text.contains("load balancer done after the crash loop"),
        "{text}"
    );
    assert!(
        !text.contains("telling the agent"),
        "no agent to tell: {text}"
    );
    assert_eq!(
        status["drains"],
        serde_json::json!({}),
        "the deregistration is no drain: {status}"
    );

    // Waiting for the group, the guard is alive (longer than a stuck loop may take) and not ready.
    let addr = guard.health_addr();
    let_time_pass(
        "longer than /livez lets a loop go quiet",
        Duration::from_secs(6),
    );
    let (code, _, body) = http(&addr, "GET", "/livez?verbose");
    assert_eq!(code, 200, "the guard is at work: {body}");
    assert_eq!(http(&addr, "GET", "/readyz").0, 503);
    assert!(guard.child.try_wait().expect("try_wait").is_none());

    let completed = scale_in_and_complete(&w, &mut guard);
    assert!(deregistered[0].at < completed);
    assert_eq!(w.elb_calls("DeregisterTargets").len(), 1);
    assert!(w.elb_calls("RegisterTargets").is_empty());
}

#[test]
fn refused_or_without_a_target_group_one_line_says_so_and_the_hook_is_not_held() {
    for refused in [true, false] {
        let dir = scratch();
        let w = world(refused);
        if refused {
            w.elb.deny("DeregisterTargets");
        }
        let mut guard = crash_looped_with_hook(dir.path(), &w);
        let said = |g: &Guard| {
            g.log()
                .lines()
                .filter(|l| l.contains("after the crash loop"))
                .count()
        };
        wait_until("one line on the load balancer", SOON, || said(&guard) > 0);
        let text = guard.log();
        assert_eq!(said(&guard), 1, "refused {refused}: {text}");
        let why = if refused {
            "deregistration after the crash loop refused"
        } else {
            "no target group to deregister from after the crash loop"
        };
        assert!(text.contains(why), "refused {refused}: {text}");
        let terminating = Instant::now();
        let completed = scale_in_and_complete(&w, &mut guard);
        assert!(
            completed.saturating_duration_since(terminating) < SOON,
            "refused {refused}: {}",
            guard.log()
        );
    }
}

#[test]
fn without_a_hook_the_target_groups_are_read_only_after_the_crash_loop_then_deregistered() {
    let dir = scratch();
    let w = world(true);
    // No hook nor protection: the guard works with its group only after a crash loop.
    let (mut guard, log) = guard(dir.path(), &w, &[], &["wait", "fail", "fail"]);
    wait_until("the agent runs", SOON, || {
        crate::support::read(&log).contains("start")
    });
    let_time_pass("a moment of the agent running", Duration::from_secs(1));
    assert!(w.elb.calls().is_empty(), "no load balancer call before");
    std::fs::write(format!("{}.go", log.display()), b"").expect("let the agent fail");
    assert_eq!(guard.code(), 1, "the agent's last status: {}", guard.log());
    let deregistered = w.elb_calls("DeregisterTargets");
    assert_eq!(
        deregistered.len(),
        1,
        "before the guard exits: {}",
        guard.log()
    );
    assert_eq!(deregistered[0].status, 200);
    assert!(w.asg_calls("SetInstanceHealth")[0].at < deregistered[0].at);
}
