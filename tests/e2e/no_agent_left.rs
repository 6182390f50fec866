//! The termination hook when no agent runs any more: a guard whose agent is gone and whose
//! instance is terminating completes the hook itself before it exits, never leaving it to its
//! timeout. A scale-in that arrives while a self-exited agent's leftovers are cleared is kept
//! (issue 23, item 5); after a crash loop marked the instance Unhealthy the guard stays, serving
//! health with readiness failing, until the group terminates the instance, then completes the
//! hook, once, and exits with the agent's status; a stop signal ends that wait at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_guard::sim::autoscaling::{Hook, TERMINATING};

use crate::support::{
    Guard, SOON, World, aws_command, fixture, gone, http, read, scratch, wait_until,
};

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";

fn world() -> World {
    World::start(
        GROUP,
        INSTANCE,
        [Hook::new("drain-hook", TERMINATING).heartbeat_timeout(Duration::from_secs(60))],
    )
}

fn guard(dir: &Path, w: &World, options: &[&str], agent: &[String]) -> Guard {
    let mut cmd = aws_command(&w.imds, &w.asg);
    cmd.args([
        "--log-format",
        "json",
        "--terminate-hook",
        "drain-hook",
        "--asg-name",
        GROUP,
        "--health-listen",
        "127.0.0.1:0",
    ])
    .args(options)
    .arg("--")
    .args(agent);
    Guard::spawn(dir, cmd)
}

/// The group scales the instance in: its hook waits in `Terminating:Wait`, and IMDS says so.
fn scale_in(w: &World) {
    w.asg.terminate(GROUP, INSTANCE);
    w.imds.set_lifecycle_state(Some("Terminated"));
}

/// The one completion of the termination hook, checked: CONTINUE, by this guard, after `after`.
fn completed_once_after(w: &World, guard: &Guard, after: Instant) {
    let completes = w.calls("CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "{completes:?}\n{}", guard.log());
    let complete = &completes[0];
    assert_eq!(complete.status, 200, "{complete:?}");
    assert_eq!(complete.params["LifecycleHookName"], "drain-hook");
    assert_eq!(complete.params["LifecycleActionResult"], "CONTINUE");
    assert!(
        complete.at > after,
        "completed {:?} before the last of the agent was gone",
        after - complete.at
    );
    assert_eq!(w.asg.completions().len(), 1);
    assert!(
        w.asg.completions()[0].by_call,
        "completed by the guard, not the timeout"
    );
}

/// An agent that exits 0 at once, leaving a process in its group that ignores SIGTERM and lives
/// until `DIR/release` exists; it writes its pid to `DIR/leftover.pid` and `DIR/leftover.gone`
/// as it ends.
fn agent_leaving_a_leftover(dir: &Path) -> Vec<String> {
    // The agent exits only once the leftover ignores SIGTERM: the guard's stop signal to the
    // leftovers comes at once, and could otherwise beat the `trap`.
    let script = r#"d=$1
(trap '' TERM; : > "$d/leftover.trapped"; while [ ! -e "$d/release" ]; do sleep 0.05; done; echo gone > "$d/leftover.gone") &
echo $! > "$d/leftover.pid"
while [ ! -e "$d/leftover.trapped" ]; do sleep 0.01; done
exit 0"#;
    vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "agent".into(),
        dir.display().to_string(),
    ]
}

#[test]
fn a_scale_in_while_a_self_exited_agents_leftovers_are_cleared_completes_the_hook() {
    let dir = scratch();
    let w = world();
    let mut guard = guard(
        dir.path(),
        &w,
        &["--restart", "never", "--stop-timeout", "10m"],
        &agent_leaving_a_leftover(dir.path()),
    );
    let pid_file = dir.path().join("leftover.pid");
    wait_until("the leftover runs", SOON, || {
        !read(&pid_file).trim().is_empty()
    });
    let leftover: i32 = read(&pid_file).trim().parse().expect("a pid");
    wait_until("the guard waits for the leftover", SOON, || {
        guard.log().contains("leftovers_waited")
    });
    wait_until("lifecycle setup", SOON, || {
        guard.log().contains("lifecycle hooks ready")
    });

    scale_in(&w);
    let asked = Instant::now();
    while !guard
        .log()
        .contains("drain after the agent exited by itself")
    {
        assert!(
            asked.elapsed() < SOON,
            "the scale-in was not kept for the run's end:\n{}",
            guard.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(w.calls("CompleteLifecycleAction").is_empty());
    let released = Instant::now();
    std::fs::write(dir.path().join("release"), b"").expect("release the leftover");

    assert_eq!(guard.code(), 0, "the agent's own status: {}", guard.log());
    assert!(gone(leftover), "the leftover is gone");
    assert!(dir.path().join("leftover.gone").exists());
    completed_once_after(&w, &guard, released);
}

/// The fixture agent failing at each of three starts: a crash loop.
fn crash_looping_agent(dir: &Path) -> (PathBuf, Vec<String>) {
    let log = dir.join("agent.log");
    let argv = vec![
        fixture("restarting_agent.sh").display().to_string(),
        log.display().to_string(),
        "fail".into(),
        "fail".into(),
        "fail".into(),
    ];
    (log, argv)
}

const CRASH_LOOP: &[&str] = &[
    "--restart",
    "on-failure",
    "--restart-delay",
    "50ms",
    "--restart-max-delay",
    "100ms",
    "--crash-loop",
    "3/1m",
    // The crashes are not the drain's fault: the scale-in finds nothing left to lose.
    "--on-unclean-exit",
    "continue",
];

/// Starts a guard whose agent crash-loops, and waits until the instance is marked Unhealthy and
/// the guard says it waits for the group to terminate it.
fn crash_looped(dir: &Path, w: &World) -> (Guard, PathBuf) {
    let (log, agent) = crash_looping_agent(dir);
    let guard = guard(dir, w, CRASH_LOOP, &agent);
    wait_until("marked Unhealthy", SOON, || {
        !w.calls("SetInstanceHealth").is_empty()
    });
    wait_until("the guard says what it waits for", SOON, || {
        guard.status()["lifecycle"]["waiting_for"]["what"] == "termination"
    });
    (guard, log)
}

#[test]
fn after_a_crash_loop_marked_the_instance_unhealthy_the_guard_stays_to_complete_the_hook() {
    let dir = scratch();
    let w = world();
    let (mut guard, log) = crash_looped(dir.path(), &w);
    let starts = read(&log)
        .lines()
        .filter(|l| l.starts_with("start"))
        .count();
    let exits = read(&log).lines().filter(|l| l.starts_with("exit")).count();
    assert_eq!((starts, exits), (3, 3), "{}", read(&log));
    // Still there, serving health: not ready, but live (at work: a liveness probe must not
    // restart it and leave the hook to its timeout), saying why it stays.
    assert!(guard.child.try_wait().expect("try_wait").is_none());
    let addr = guard.health_addr();
    assert_eq!(http(&addr, "GET", "/readyz").0, 503);
    let (code, _, body) = http(&addr, "GET", "/livez?verbose");
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = http(&addr, "GET", "/status");
    assert_eq!(code, 200);
    assert!(body.contains("\"termination\""), "{body}");
    let status = guard.status();
    let text = status["lifecycle"]["waiting_for"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("terminate the instance"), "{status}");
    assert_eq!(status["lifecycle"]["terminate_hook"]["state"], "awaiting");
    assert!(w.calls("CompleteLifecycleAction").is_empty());

    let terminating = Instant::now();
    scale_in(&w);
    assert_eq!(guard.code(), 1, "the agent's last status: {}", guard.log());
    completed_once_after(&w, &guard, terminating);
    let marked = w.calls("SetInstanceHealth");
    assert_eq!(marked.len(), 1, "{marked:?}");
    assert!(marked[0].at < w.calls("CompleteLifecycleAction")[0].at);
}

#[test]
fn a_stop_signal_ends_the_wait_for_the_termination_at_once() {
    let dir = scratch();
    let w = world();
    let (mut guard, _) = crash_looped(dir.path(), &w);
    let stopped = Instant::now();
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 1, "the agent's last status: {}", guard.log());
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
    assert!(
        guard.log().contains("stopped while the hook work waited"),
        "{}",
        guard.log()
    );
    assert!(w.calls("CompleteLifecycleAction").is_empty());
}
