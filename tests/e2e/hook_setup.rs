//! The termination hook waits only on what completing it needs: the group, the instance id and
//! the hook's name. The hook's heartbeat timeout (`DescribeLifecycleHooks`) only sets the
//! heartbeat cadence, so a read of it throttled or denied for minutes from start (a fleet
//! scaling out together is throttled exactly then) never holds up a completion: a scale-in at
//! any moment is completed CONTINUE within 15 s of the agent's exit.

use std::time::{Duration, Instant};

use agent_guard::sim::autoscaling::{AutoScalingSim, Faults, Hook, TERMINATING};
use agent_guard::sim::imds::ImdsSim;

use crate::support::{Guard, SOON, aws_command, scratch, wait_until};

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";
/// The floor: from the agent's exit (bounded here by the notice, which comes before it) to the
/// completion.
const FLOOR: Duration = Duration::from_secs(15);

/// When the scale-in comes.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// The instance is already terminating when the guard starts.
    AtStart,
    /// Just after the first read of the hook's timeout was refused.
    AfterFirstRefusal,
}

/// Runs one guard with `DescribeLifecycleHooks` refused as `faults` says, scales the instance
/// in at `moment`, and checks the hook was completed CONTINUE, by the guard, within the floor.
fn scale_in_with_the_timeout_unreadable(faults: Faults, moment: Moment) {
    let dir = scratch();
    let imds = ImdsSim::start().expect("imds sim");
    let asg = AutoScalingSim::start().expect("asg sim");
    asg.add_instance(GROUP, INSTANCE, "InService");
    asg.put_hook(
        GROUP,
        Hook::new("drain-hook", TERMINATING).heartbeat_timeout(Duration::from_secs(30)),
    );
    asg.set_faults(faults);
    let mut notice_at = Instant::now();
    let scale_in = |at: &mut Instant| {
        asg.terminate(GROUP, INSTANCE);
        imds.set_lifecycle_state(Some("Terminated"));
        *at = Instant::now();
    };
    if let Moment::AtStart = moment {
        scale_in(&mut notice_at);
    }
    let mut cmd = aws_command(&imds, &asg);
    cmd.args(["--terminate-hook", "drain-hook", "--asg-name", GROUP])
        .args(["--", "sleep", "600"]);
    let mut guard = Guard::spawn(dir.path(), cmd);
    if let Moment::AfterFirstRefusal = moment {
        wait_until("the first read of the hook's timeout", SOON, || {
            asg.calls()
                .iter()
                .any(|c| c.action == "DescribeLifecycleHooks" && c.status != 200)
        });
        scale_in(&mut notice_at);
    }
    // The agent's own status (143: SIGTERM), once the hook work ended.
    let status = guard.wait(FLOOR);
    let log = guard.log();
    assert_eq!(status.code(), Some(143), "{moment:?}: {log}");
    let completions = asg.completions();
    assert_eq!(completions.len(), 1, "{moment:?}: {completions:?}\n{log}");
    let done = &completions[0];
    assert_eq!(done.result, "CONTINUE", "{moment:?}");
    assert!(
        done.by_call,
        "{moment:?}: completed by the guard, not the timeout"
    );
    let took = done.at.saturating_duration_since(notice_at);
    assert!(
        took < FLOOR,
        "{moment:?}: completed {took:?} after the notice (the floor is {FLOOR:?} after the exit)\n{log}"
    );
    assert!(!log.contains("no hook completed"), "{moment:?}: {log}");
}

#[test]
fn a_throttled_hook_timeout_read_never_holds_up_the_completion() {
    for moment in [Moment::AtStart, Moment::AfterFirstRefusal] {
        let faults = Faults {
            throttled: ["DescribeLifecycleHooks".to_string()].into_iter().collect(),
            ..Faults::default()
        };
        scale_in_with_the_timeout_unreadable(faults, moment);
    }
}

#[test]
fn a_denied_hook_timeout_read_never_holds_up_the_completion() {
    for moment in [Moment::AtStart, Moment::AfterFirstRefusal] {
        let faults = Faults {
            denied: ["DescribeLifecycleHooks".to_string()].into_iter().collect(),
            ..Faults::default()
        };
        scale_in_with_the_timeout_unreadable(faults, moment);
    }
}
