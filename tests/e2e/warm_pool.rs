//! `--in-warm-pool wait`: an instance launched into a warm pool completes its launch hook
//! without starting the agent, says why it is not ready, and starts the agent once the target
//! lifecycle state is InService; started afresh in service, it starts the agent at once; stopped
//! while held, it exits 0 without ever having started it. Back in the warm pool after service,
//! the guard stops the agent, completes the termination hook, stays, and starts the agent again
//! once the instance is InService again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_guard::sim::autoscaling::{AutoScalingSim, Call, Hook, LAUNCHING, TERMINATING};
use agent_guard::sim::imds::ImdsSim;

use crate::support::{
    Guard, SOON, aws_command, children, fixture, gone, http, read, scratch, wait_until,
};

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";
const HOOK: &str = "launch-hook";

fn world(first_state: &str) -> (ImdsSim, AutoScalingSim) {
    let imds = ImdsSim::start().expect("imds sim");
    imds.set_lifecycle_state(Some(first_state));
    let asg = AutoScalingSim::start().expect("asg sim");
    asg.add_instance(GROUP, INSTANCE, "Pending");
    asg.put_hook(
        GROUP,
        Hook::new(HOOK, LAUNCHING).heartbeat_timeout(Duration::from_secs(60)),
    );
    (imds, asg)
}

/// A guard with `--in-warm-pool wait` and a launch hook around the recorder agent, whose
/// `signals.log.ready` appears once it runs.
fn guard(dir: &Path, imds: &ImdsSim, asg: &AutoScalingSim) -> (Guard, PathBuf) {
    let log = dir.join("signals.log");
    let mut cmd = aws_command(imds, asg);
    cmd.args(["--in-warm-pool", "wait", "--launch-hook", HOOK])
        .args(["--asg-name", GROUP, "--health-listen", "127.0.0.1:0"])
        .arg("--")
        .arg(fixture("recorder.py"))
        .arg(&log);
    (Guard::spawn(dir, cmd), dir.join("signals.log.ready"))
}

fn completions(asg: &AutoScalingSim) -> Vec<Call> {
    asg.calls()
        .into_iter()
        .filter(|c| c.action == "CompleteLifecycleAction" && c.status == 200)
        .collect()
}

#[test]
fn a_warmed_instance_completes_its_launch_hook_without_the_agent_and_starts_it_in_service() {
    let dir = scratch();
    let (imds, asg) = world("Warmed:Running");
    asg.launch_into_warm_pool(GROUP, INSTANCE);
    let (mut guard, agent_ready) = guard(dir.path(), &imds, &asg);
    wait_until("the warm-pool launch hook is completed", SOON, || {
        completions(&asg).len() == 1
    });
    let first = &completions(&asg)[0];
    assert_eq!(first.params["LifecycleActionResult"], "CONTINUE");
    assert_eq!(first.params["LifecycleHookName"], HOOK);
    assert_eq!(
        asg.instance_state(INSTANCE).as_deref(),
        Some("Warmed:Stopped")
    );
    let addr = guard.health_addr();
    // Held past the liveness bound (5 s without the supervisor's loop): still alive, not ready.
    wait_until("held for 6 s", SOON, || {
        guard.started.elapsed() > Duration::from_secs(6)
    });
    assert!(!agent_ready.exists(), "no agent before InService");
    assert!(
        children(guard.pid()).is_empty(),
        "the guard has no child process: {:?}",
        children(guard.pid())
    );
    let (code, _, body) = http(&addr, "GET", "/readyz?verbose");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("[-]warm-pool failed: the instance is in a warm pool (Warmed:Running)"),
        "{body}"
    );
    assert_eq!(http(&addr, "GET", "/livez").0, 200, "{}", guard.log());
    let status = guard.status();
    assert!(
        status["held"]
            .as_str()
            .is_some_and(|h| h.contains("--in-warm-pool wait")),
        "{status}"
    );
    assert!(status["agent_pid"].is_null(), "{status}");

    // Into service: the group pauses the launch at Pending:Wait again, IMDS says InService.
    asg.launch(GROUP, INSTANCE);
    imds.set_lifecycle_state(Some("InService"));
    wait_until("the agent starts", SOON, || agent_ready.exists());
    wait_until("the second launch hook is completed", SOON, || {
        completions(&asg).len() == 2
    });
    assert_eq!(
        completions(&asg)[1].params["LifecycleActionResult"],
        "CONTINUE"
    );
    assert_eq!(asg.instance_state(INSTANCE).as_deref(), Some("InService"));
    wait_until("ready", SOON, || http(&addr, "GET", "/readyz").0 == 200);
    assert!(guard.status()["held"].is_null());
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "{}", guard.log());
}

#[test]
fn started_afresh_in_service_the_agent_starts_at_once() {
    // On AWS a warmed instance is usually stopped and started again: the guard then starts with
    // the target state InService, and the launch hook waits for the agent as at any launch.
    let dir = scratch();
    let (imds, asg) = world("InService");
    asg.launch(GROUP, INSTANCE);
    let (mut guard, agent_ready) = guard(dir.path(), &imds, &asg);
    wait_until("the agent starts", SOON, || agent_ready.exists());
    wait_until("the launch hook is completed", SOON, || {
        completions(&asg).len() == 1
    });
    assert!(
        !guard.log().contains("warm pool"),
        "nothing held: {}",
        guard.log()
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "{}", guard.log());
}

#[test]
fn stopped_while_held_the_guard_exits_0_without_ever_starting_the_agent() {
    let dir = scratch();
    let (imds, asg) = world("Warmed:Stopped");
    asg.launch_into_warm_pool(GROUP, INSTANCE);
    let (mut guard, agent_ready) = guard(dir.path(), &imds, &asg);
    wait_until("held", SOON, || {
        guard.log().contains("the agent starts once")
    });
    wait_until("the launch hook is completed", SOON, || {
        completions(&asg).len() == 1
    });
    // A state other than InService keeps it held.
    imds.set_lifecycle_state(Some("Warmed:Hibernated"));
    wait_until("the new state is seen", SOON, || {
        guard
            .log()
            .contains("Warmed:Hibernated: the agent stays held")
    });
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert!(!agent_ready.exists(), "the agent never ran");
    assert!(!guard.socket.exists(), "the control socket is removed");
    assert_eq!(completions(&asg).len(), 1, "no other hook completed");
}

fn completions_of(asg: &AutoScalingSim, hook: &str) -> Vec<Call> {
    completions(asg)
        .into_iter()
        .filter(|c| c.params["LifecycleHookName"] == hook)
        .collect()
}

#[test]
fn back_in_the_warm_pool_the_guard_stays_and_starts_the_agent_again_in_service() {
    let dir = scratch();
    let (imds, asg) = world("InService");
    asg.put_hook(
        GROUP,
        Hook::new("drain-hook", TERMINATING).heartbeat_timeout(Duration::from_secs(60)),
    );
    asg.launch(GROUP, INSTANCE);
    let log = dir.path().join("signals.log");
    let mut cmd = aws_command(&imds, &asg);
    cmd.args(["--in-warm-pool", "wait", "--launch-hook", HOOK])
        .args(["--terminate-hook", "drain-hook", "--asg-name", GROUP])
        .args(["--health-listen", "127.0.0.1:0"])
        .arg("--")
        .arg(fixture("recorder.py"))
        .arg(&log);
    let mut guard = Guard::spawn(dir.path(), cmd);
    let agent_ready = dir.path().join("signals.log.ready");
    wait_until("the agent runs", SOON, || agent_ready.exists());
    wait_until("the launch hook is completed", SOON, || {
        completions_of(&asg, HOOK).len() == 1
    });
    let first = guard.status()["agent_pid"]
        .as_i64()
        .expect("the agent's pid") as i32;
    std::fs::remove_file(&agent_ready).expect("remove the ready mark");

    // Back to the warm pool: the group holds the termination hook, IMDS says Warmed:Running.
    asg.terminate(GROUP, INSTANCE);
    imds.set_lifecycle_state(Some("Warmed:Running"));
    wait_until("the termination hook is completed", SOON, || {
        completions_of(&asg, "drain-hook").len() == 1
    });
    let done = &completions_of(&asg, "drain-hook")[0];
    assert_eq!(done.params["LifecycleActionResult"], "CONTINUE");
    assert!(gone(first), "the first agent is gone");
    assert!(
        read(&log).contains("SIGTERM"),
        "the agent was stopped: {}",
        read(&log)
    );
    // The sim records the call before the guard logs its answer.
    wait_until("the completion is logged", SOON, || {
        guard
            .log()
            .contains("the guard stays, to start the agent again")
    });
    let text = guard.log();
    let all_gone = text
        .find("every process of the agent is gone")
        .expect("gone line");
    let completed = text
        .find("the guard stays, to start the agent again")
        .expect("the termination hook's completed line");
    assert!(all_gone < completed, "{text}");
    // The guard stays, held, and says what it waits for.
    wait_until("held again", SOON, || !guard.status()["held"].is_null());
    assert!(
        guard.child.try_wait().expect("try_wait").is_none(),
        "{}",
        guard.log()
    );
    let text = guard.log();
    assert!(text.contains("the guard stays"), "{text}");
    assert!(!text.contains("the guard exits"), "{text}");
    let addr = guard.health_addr();
    assert_eq!(http(&addr, "GET", "/readyz").0, 503);

    // In the pool the group pauses the instance at Warmed:Pending:Wait: completed at once,
    // without the agent.
    asg.launch_into_warm_pool(GROUP, INSTANCE);
    wait_until("the warm-pool launch hook is completed", SOON, || {
        completions_of(&asg, HOOK).len() == 2
    });
    assert!(!agent_ready.exists(), "no agent in the pool");

    // Into service again: the agent starts, and the launch hook waits for it.
    asg.launch(GROUP, INSTANCE);
    imds.set_lifecycle_state(Some("InService"));
    wait_until("the agent starts again", SOON, || agent_ready.exists());
    wait_until("the launch hook is completed again", SOON, || {
        completions_of(&asg, HOOK).len() == 3
    });
    wait_until("ready", SOON, || http(&addr, "GET", "/readyz").0 == 200);
    assert_ne!(guard.status()["agent_pid"].as_i64(), Some(i64::from(first)));

    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert_eq!(
        completions_of(&asg, "drain-hook").len(),
        1,
        "a stop is no termination"
    );
    assert!(guard.log().contains("the guard exits"));
}
